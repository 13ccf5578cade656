/**
 * A trajectory as the dashboard's viewer shows it: the list entry, and the detail with every response token
 * as text, its mask and logprob. Token text is decoded server-side, one id at a time with special tokens
 * kept, so the page needs no tokenizer and shows exactly the tokens the record holds (`<|im_end|>` included).
 */
import type { ChatTokenizer } from "../Tokenizer.ts"
import type { FinishReason, Trajectory, TrajectoryError, Turn } from "../Trajectory.ts"

export interface TrajectorySummary {
  readonly id: string
  readonly interaction: string
  readonly reward: number
  readonly finishReason: FinishReason
  readonly numTurns: number
  readonly responseTokens: number
}

export interface TokenView {
  readonly id: number
  /** The token's text; null without a tokenizer (the page shows the id). */
  readonly text: string | null
  readonly mask: 0 | 1
  readonly logprob: number
}

export interface TrajectoryDetail extends TrajectorySummary {
  readonly groupId: string
  readonly seed: number
  readonly error: TrajectoryError | null
  /** The prompt as the policy read it (special tokens kept); null without a tokenizer. */
  readonly prompt: string | null
  readonly promptTokens: number
  readonly turns: ReadonlyArray<Omit<Turn, "timings">>
  readonly tokens: ReadonlyArray<TokenView>
}

export const summary = (t: Trajectory): TrajectorySummary => ({
  id: t.id,
  interaction: t.interaction,
  reward: t.reward,
  finishReason: t.finishReason,
  numTurns: t.numTurns,
  responseTokens: t.responseIds.length
})

/**
 * Makes trajectory details with `tokenizer` (or token ids alone without one). Each token is decoded once and
 * remembered: the tokens a run uses are few.
 */
export const detailer = (tokenizer: ChatTokenizer | undefined) => {
  const cache = new Map<number, string>()
  const tokenText = (id: number): string | null => {
    if (tokenizer === undefined) return null
    let text = cache.get(id)
    if (text === undefined) {
      text = tokenizer.decode([id], { skipSpecialTokens: false })
      cache.set(id, text)
    }
    return text
  }
  return (t: Trajectory): TrajectoryDetail => ({
    ...summary(t),
    groupId: t.groupId,
    seed: t.seed,
    error: t.error,
    prompt: tokenizer === undefined ? null : tokenizer.decode(t.promptIds, { skipSpecialTokens: false }),
    promptTokens: t.promptIds.length,
    turns: t.turns.map(({ timings: _, ...turn }) => turn),
    tokens: t.responseIds.map((id, i) => ({
      id,
      text: tokenText(id),
      mask: t.responseMask[i] ?? 0,
      logprob: t.responseLogprobs[i] ?? 0
    }))
  })
}
