/** The message of whatever was thrown: an Error's message, or the value as text. */
export const errorMessage = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))
