/**
 * One JSON request to an env server, its outcome classified for the endpoint's retries and breaker: a
 * refused connection, a full server, a 5xx, a 4xx (with the fields the server named), a reply that is not
 * JSON. The reply body is then the caller's to check against its schema.
 */
import { errorMessage } from "../errorMessage.ts"
import { connectionFailure, RemoteCallError } from "./Endpoint.ts"

export interface JsonRequest {
  readonly method: "GET" | "POST"
  readonly body?: unknown
  readonly token?: string | undefined
  readonly signal: AbortSignal
}

const snippet = (text: string) => (text.length > 200 ? `${text.slice(0, 200)}...` : text)

/** FastAPI's `detail` (a string, or a list of `{loc, msg}`) as one line. */
const describeDetail = (body: unknown): string | undefined => {
  if (typeof body !== "object" || body === null) return undefined
  const detail = (body as { readonly detail?: unknown }).detail
  if (typeof detail === "string") return detail
  if (Array.isArray(detail)) {
    return detail.map((problem: { readonly loc?: ReadonlyArray<unknown>; readonly msg?: unknown }) =>
      `${Array.isArray(problem?.loc) ? problem.loc.join(".") : "?"}: ${String(problem?.msg)}`
    ).join("; ")
  }
  return undefined
}

export const fetchJson = async (url: string, request: JsonRequest): Promise<unknown> => {
  let response: Response
  try {
    response = await fetch(url, {
      method: request.method,
      headers: {
        ...(request.body !== undefined ? { "content-type": "application/json" } : {}),
        ...(request.token !== undefined ? { authorization: `Bearer ${request.token}` } : {})
      },
      ...(request.body !== undefined ? { body: JSON.stringify(request.body) } : {}),
      signal: request.signal
    })
  } catch (cause) {
    if (request.signal.aborted) throw cause
    throw connectionFailure(cause)
  }
  let text: string
  try {
    text = await response.text()
  } catch (cause) {
    if (request.signal.aborted) throw cause
    throw new RemoteCallError("disconnected", `the reply was cut off: ${errorMessage(cause)}`)
  }
  let body: unknown
  let parsed = true
  try {
    body = JSON.parse(text)
  } catch {
    parsed = false
  }
  const detail = parsed ? describeDetail(body) : undefined
  if (!response.ok) {
    const what = `HTTP ${response.status}${detail !== undefined ? `: ${detail}` : text !== "" ? `: ${snippet(text)}` : ""}`
    const code = parsed && typeof body === "object" && body !== null ? (body as { readonly code?: unknown }).code : undefined
    if (response.status === 503 && code === "CAPACITY_REACHED") throw new RemoteCallError("capacity", what)
    throw new RemoteCallError(response.status >= 500 ? "server" : "rejected", what)
  }
  if (!parsed) throw new RemoteCallError("protocol", `the reply is not JSON: ${snippet(text)}`)
  return body
}
