/**
 * episodic: multi-turn reinforcement learning for language models. The public face of the library.
 */
export * as AgentEpisode from "./AgentEpisode.ts"
export { AgentGateway } from "./AgentGateway.ts"
export * as Dataset from "./Dataset.ts"
export type { DatasetRow } from "./DatasetRow.ts"
export { Engine, type EngineOptions, EngineOptionsError } from "./Engine.ts"
export { EngineWorkerError, type WorkersOptions } from "./EngineWorkers.ts"
export {
  define as defineEnvironment,
  type Environment,
  type EnvironmentDefinition,
  EnvironmentError,
  type ResetOptions,
  type ResetResult,
  type StepOptions,
  type StepResult
} from "./Environment.ts"
export { arithmetic } from "./environments/arithmetic.ts"
export { chat, type ChatTransform, lengthReward } from "./environments/chat.ts"
export { gridQuest, solveGridQuest } from "./environments/gridQuest.ts"
export { EnvironmentRegistry } from "./environments/registry.ts"
export { gymEnvironment, type GymConfig } from "./remote/GymEnvironment.ts"
export { startMockGymServer } from "./remote/mockGymServer.ts"
export { remoteEnvironment, type RemoteConfig } from "./remote/RemoteEnvironment.ts"
export * as Episode from "./Episode.ts"
export { defineExperiment, type ExperimentConfig, ExperimentError } from "./Experiment.ts"
export { GenerationRequest, GenerationResult, InferenceError, SamplingParams } from "./Generation.ts"
export { Inference } from "./Inference.ts"
export { defineInteraction, fromInteraction, type Interaction, type InteractionResponse } from "./Interaction.ts"
export * as JsonlWriter from "./JsonlWriter.ts"
export { Message } from "./Message.ts"
export * as Run from "./Run.ts"
export * as TextPolicy from "./TextPolicy.ts"
export { type ChatTokenizer, Tokenizer } from "./Tokenizer.ts"
export * as Trajectory from "./Trajectory.ts"
export { type EpisodeEvent, type EpisodeInput, type EpisodeLimits, episodeMachine, generateInput, interactInput } from "../machines/episode.ts"
export { agentEpisodeMachine } from "../machines/agent-episode.ts"
export { InferenceActor, type InferenceActorOptions } from "../actors/inference/index.ts"
export { initModel } from "./model/init.ts"
export { readConfig, presets, type LlamaConfig } from "./model/config.ts"
export * as Safetensors from "./model/safetensors.ts"
export { exportOnnx } from "./model/onnxExport.ts"
export { describe as describeModel, summary as modelSummary, type ModelConfig, type Family as ModelFamily } from "./model/family.ts"
export { graphFor, importCheckpoint, inspect as inspectCheckpoint } from "./model/huggingFace.ts"
export { runExperiment, type ExperimentRun, type RunExperimentOptions } from "./runExperiment.ts"
export { RunMonitor, type RunSnapshot, type MetricsPoint } from "./RunMonitor.ts"
export { Trainer, type AlgorithmConfig, type TrainerOptions, type UpdateMetrics, type SftMetrics } from "../actors/trainer/Trainer.ts"
export { TrainerThread, type TrainerHandle, type TrainerThreadOptions } from "../actors/trainer/thread.ts"
export { PolicyModel } from "../actors/trainer/PolicyModel.ts"
export { rewardManager, type RewardConfig, type RewardFunction } from "../actors/trainer/rewards.ts"
export { groupAdvantages, gae, whiten, tokenRewards } from "../actors/trainer/advantages.ts"
export { AdamW, learningRateAt, type AdamWConfig, type LearningRateSchedule } from "../actors/trainer/optimizer.ts"
export * as Checkpoint from "../actors/trainer/checkpoint.ts"
export { selectBackend, type TrainerBackend } from "../actors/trainer/backend.ts"
