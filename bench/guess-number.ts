/**
 * Guess the Number baselines on the same 1000 seeds (rows({ seed: 0, count: 1000 })): the binary-search solver,
 * which reads every reply; uniformly random guesses; and a policy that ignores the replies (a fixed sequence of
 * guesses). The solver should always win within 7 guesses; a policy that ignores the replies can win at most
 * maxGuesses / 100 of the games, which is the point of the task.
 */
import { feedbackIgnoringGuess, guessNumber, randomGuess, solveGuessNumber } from "../src/environments/guessNumber.ts"
import { mulberry32 } from "../src/Seed.ts"

const episodes = 1000
const signal = new AbortController().signal

/** Makes one episode's policy: the conversation so far and the guesses made, in; a guess out. */
type Policy = (seed: number) => (conversation: string, guesses: number) => string

const binarySearch: Policy = () => (conversation) => solveGuessNumber(conversation)

// Its own stream per episode, apart from the secret's, so the baseline is reproducible seed by seed.
const randomPlay: Policy = (seed) => {
  const random = mulberry32(seed + 1_000_000)
  return () => randomGuess(random)
}

const ignoreReplies: Policy = () => (_conversation, guesses) => feedbackIgnoringGuess(guesses)

const evaluate = async (policy: Policy) => {
  let wins = 0
  let totalReward = 0
  let totalGuesses = 0
  let winningGuesses = 0
  for (const row of guessNumber.rows!({ seed: 0, count: episodes, config: {} })) {
    const seed = row.extra_info.seed!
    const act = policy(seed)
    const environment = guessNumber.make({})
    let conversation = (await environment.reset({ seed, row, signal })).observation as string
    for (let guesses = 0, done = false; !done; guesses++) {
      const action = act(conversation, guesses)
      const result = await environment.step(action, { signal })
      conversation += `\n${action}\n${result.observation}`
      totalReward += result.reward
      totalGuesses += 1
      done = result.done
      if (done && result.info?.["success"] === true) {
        wins += 1
        winningGuesses += guesses + 1
      }
    }
  }
  return {
    success: wins / episodes,
    meanReward: totalReward / episodes,
    meanGuesses: totalGuesses / episodes,
    meanGuessesToWin: wins > 0 ? winningGuesses / wins : null
  }
}

export default async function guessNumberBench(): Promise<void> {
  const figures = {
    solver: await evaluate(binarySearch),
    random: await evaluate(randomPlay),
    ignoring: await evaluate(ignoreReplies)
  }
  console.log("| policy | episodes | success rate | mean reward | mean guesses | mean guesses in a win |")
  console.log("| --- | ---: | ---: | ---: | ---: | ---: |")
  for (const [name, row] of [
    ["binary-search solver", figures.solver],
    ["uniformly random guess", figures.random],
    ["fixed guesses, replies ignored", figures.ignoring]
  ] as const) {
    console.log(
      `| ${name} | ${episodes} | ${row.success.toFixed(3)} | ${row.meanReward.toFixed(3)} | ${row.meanGuesses.toFixed(2)} | ${row.meanGuessesToWin?.toFixed(2) ?? "-"} |`
    )
  }
  const json: Record<string, unknown> = { bench: "guess-number", episodes }
  for (const [name, row] of Object.entries(figures)) {
    json[`${name}_success`] = row.success
    json[`${name}_mean_reward`] = Number(row.meanReward.toFixed(4))
    json[`${name}_mean_guesses`] = row.meanGuesses
  }
  console.log(JSON.stringify(json))
}
