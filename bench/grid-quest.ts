/**
 * Grid Quest baselines: the scripted solver against a uniformly random valid-action policy on the same
 * 1000 seeds (rows({ seed: 0, count: 1000 })). The solver should always win; random play sets the floor a
 * trained policy has to beat.
 */
import { gridQuest, randomValidAction, solveGridQuest } from "../src/environments/gridQuest.ts"
import { mulberry32 } from "../src/Seed.ts"

const episodes = 1000
const signal = new AbortController().signal

/** Makes one episode's policy: observation text in, action text out. */
type Policy = (seed: number) => (observation: string) => string

const scriptedSolver: Policy = () => solveGridQuest

// Its own stream per episode, apart from the layout's, so the baseline is reproducible seed by seed.
const randomPlay: Policy = (seed) => {
  const random = mulberry32(seed + 1_000_000)
  return () => randomValidAction(random)
}

const evaluate = async (policy: Policy) => {
  let wins = 0
  let totalReward = 0
  let totalSteps = 0
  for (const row of gridQuest.rows!({ seed: 0, count: episodes, config: {} })) {
    const seed = row.extra_info.seed!
    const act = policy(seed)
    const environment = gridQuest.make({})
    let observation = (await environment.reset({ seed, row, signal })).observation as string
    for (let done = false; !done; ) {
      const result = await environment.step(act(observation), { signal })
      observation = result.observation
      totalReward += result.reward
      totalSteps += 1
      done = result.done
      if (done && result.info?.["success"] === true) wins += 1
    }
  }
  return { success: wins / episodes, meanReward: totalReward / episodes, meanSteps: totalSteps / episodes }
}

export default async function gridQuestBench(): Promise<void> {
  const solver = await evaluate(scriptedSolver)
  const random = await evaluate(randomPlay)
  console.log("| policy | episodes | success rate | mean reward | mean steps |")
  console.log("| --- | ---: | ---: | ---: | ---: |")
  for (const [name, figures] of [
    ["scripted solver", solver],
    ["random valid action", random]
  ] as const) {
    console.log(
      `| ${name} | ${episodes} | ${figures.success.toFixed(3)} | ${figures.meanReward.toFixed(3)} | ${figures.meanSteps.toFixed(2)} |`
    )
  }
  console.log(
    JSON.stringify({
      bench: "grid-quest",
      episodes,
      solver_success: solver.success,
      solver_mean_reward: Number(solver.meanReward.toFixed(4)),
      solver_mean_steps: solver.meanSteps,
      random_success: random.success,
      random_mean_reward: Number(random.meanReward.toFixed(4)),
      random_mean_steps: random.meanSteps
    })
  )
}
