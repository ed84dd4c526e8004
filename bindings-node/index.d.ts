// Type definitions for the `microcluster` package (hand-written; the facade is index.js).

/** A value of an SQL parameter or result cell. Integers outside ±(2^53-1) come back as bigint; blobs as Buffer. */
export type SqlValue = null | boolean | number | bigint | string | Uint8Array

/**
 * An error of the library: a standard `Error` with a stable string `code`, one per core error
 * kind: `MC_INVALID_ARGUMENT`, `MC_FORBIDDEN`, `MC_NOT_FOUND`, `MC_CONFLICT`,
 * `MC_PAYLOAD_TOO_LARGE`, `MC_NOT_IMPLEMENTED`, `MC_UNAVAILABLE`, `MC_TIMEOUT`,
 * `MC_WOULD_BLOCK`, `MC_INTERNAL`. A failing hook reaches the caller of the lifecycle step
 * with the hook's message in `message` and, when the hook ran in this process, the hook's own
 * error (what it threw or rejected with) as `cause`.
 */
export interface MicroclusterError extends Error {
  /** The stable error code. */
  code: ErrorCode
  /** The failing hook's own error, when it ran in this process. */
  cause?: unknown
}

/** The codes of {@link MicroclusterError}. */
export type ErrorCode =
  | 'MC_INVALID_ARGUMENT' | 'MC_FORBIDDEN' | 'MC_NOT_FOUND' | 'MC_CONFLICT'
  | 'MC_PAYLOAD_TOO_LARGE' | 'MC_NOT_IMPLEMENTED' | 'MC_UNAVAILABLE' | 'MC_TIMEOUT'
  | 'MC_WOULD_BLOCK' | 'MC_INTERNAL'

/** The handle a transaction function gets; valid until the function's Promise settles. */
export interface Tx {
  /** Runs a query; resolves with its rows, each an array of values in column order. */
  query(sql: string, params?: SqlValue[]): Promise<SqlValue[][]>
  /** Runs a statement; resolves with how many rows it changed. */
  execute(sql: string, params?: SqlValue[]): Promise<number>
}

/**
 * A transaction function. It may run more than once (core re-runs it after a conflict with a
 * concurrent writer); only the run that commits counts, and its return value is what
 * `transaction` resolves with. Throwing (or rejecting) rolls the transaction back.
 */
export type TxFunction<T> = (tx: Tx) => T | Promise<T>

/** What hooks can see and do on their member. */
export declare class State {
  private constructor()
  /** This member's name (the host name before init). */
  readonly name: string
  /** This member's address, `IP:port` (empty before init). */
  readonly address: string
  /** The cluster members as the database has them (without status). */
  clusterMembers(): Promise<ClusterMember[]>
  /** Runs `fn(tx)` as a serializable transaction (see {@link App.transaction}). */
  transaction<T>(fn: TxFunction<T>): Promise<T>
}

/** Init configuration handed to the init hooks (`config` of `newCluster`/`joinCluster`). */
export type InitConfig = Record<string, string>

/** A member as a hook or `clusterMembers` sees it. */
export interface ClusterMember {
  name: string
  address: string
  role?: string
  status?: string
  certificate?: string
  [key: string]: unknown
}

/** A hook: may be async; throwing or rejecting fails the lifecycle step (see each hook). */
export type Hook<A> = (state: State, args: A) => void | Promise<void>

/**
 * Lifecycle hooks (SPEC §10), each optional. They run on the event loop; the daemon waits for
 * their Promise. None is called after `stop()` resolved.
 */
export interface Hooks {
  /** Before a bootstrap or join; a failure aborts the init. */
  preInit?: Hook<{ bootstrap: boolean, config: InitConfig }>
  /** After a bootstrap; a failure rolls it back. */
  postBootstrap?: Hook<{ config: InitConfig }>
  /** On a joiner, once in the cluster, before the others run onNewMember; a failure rolls the join back. */
  preJoin?: Hook<{ config: InitConfig }>
  /** On a joiner, last; a failure rolls the join back. */
  postJoin?: Hook<{ config: InitConfig }>
  /** On every existing member when `new_member` joins; a failure rolls the join back. */
  onNewMember?: Hook<{ new_member: ClusterMember }>
  /** At every start and after a reset, before the daemon is ready; a failure stops the daemon. */
  onStart?: Hook<Record<string, never>>
  /** On the member being removed; a failure aborts the removal unless forced. */
  preRemove?: Hook<{ force: boolean }>
  /** On the remaining members after a removal. */
  postRemove?: Hook<{ force: boolean }>
  /** On the leader after every heartbeat round. */
  onHeartbeat?: Hook<{ roles: Record<string, { old: string, new: string }> }>
  /** On the other members after a member's daemon configuration changed. */
  onDaemonConfigUpdate?: Hook<{ config: Record<string, unknown> }>
  /** The reset event (`reason`: `removed` or `init_failed`); its outcome is ignored. */
  onReset?: Hook<{ reason: string }>
}

/** A request to an extension endpoint, as its handler gets it. */
export interface EndpointRequest {
  /** The member's state (`state.transaction`, `state.clusterMembers`). */
  state: State
  /** The HTTP method, upper case. */
  method: string
  /** The request path, without the query. */
  path: string
  /** The values of the `{var}` segments of the endpoint's path. */
  vars: Record<string, string>
  /** The decoded query parameters, in order, as `[key, value]` pairs. */
  query: Array<[string, string]>
  /** The JSON body (`null` without one). */
  body: unknown
  /** Whether the caller is trusted (the control socket or a cluster member). */
  trusted: boolean
  /** Whether another member sends this as a cluster notification (do not fan out again). */
  notification: boolean
  /** `{ kind: 'control_socket' }`, `{ kind: 'member', name, fingerprint }` or `{ kind: 'unknown', fingerprint }`. */
  caller: { kind: 'control_socket' | 'member' | 'unknown', name?: string, fingerprint?: string | null }
}

/**
 * An endpoint handler: resolves with the JSON-able response `metadata` (`undefined`: `null`).
 * It runs on the event loop; the request waits for its Promise. Throwing (or rejecting) with an
 * error that has a numeric `status` (400–599) answers with that status, one with a `code`
 * naming an error kind (`'MC_NOT_FOUND'` or `'NOT_FOUND'`, …) with that kind's status, any
 * other with 500; the caller gets the error's `message`.
 */
export type EndpointHandler = (request: EndpointRequest) => unknown | Promise<unknown>

/**
 * A custom access check (SPEC §13): runs after the trust decision, before `?target=`
 * forwarding and the handler, with the same request the handler gets. `true` lets the request
 * on; `false` answers 403 `not authorized` without running the handler; throwing (or
 * rejecting) answers as a handler's error does (`code: 'MC_FORBIDDEN'` → 403, …); any other
 * result answers 500.
 */
export type AccessHandler = (request: EndpointRequest) => boolean | Promise<boolean>

/** A handler with its own flags, for one method of an {@link Endpoint}. */
export interface EndpointAction {
  handler: EndpointHandler
  /** Lets callers that are not cluster members through (default: the endpoint's). */
  allowUntrusted?: boolean
  /** Forwards `?target=<member>` requests to that member over mTLS (default: the endpoint's). */
  proxyTarget?: boolean
  /** Checks each request before the handler (default: the endpoint's). */
  accessHandler?: AccessHandler
}

/** A REST resource of an {@link ExtensionServer}. */
export interface Endpoint {
  /** Relative to the server's `pathPrefix`; a `{var}` segment matches one segment. */
  path: string
  /** `GET`, `PUT`, `POST`, `DELETE` or `PATCH` to a handler or an action. */
  methods: Record<string, EndpointHandler | EndpointAction>
  /** Identifies the endpoint in errors (default: the path); unique in its server. */
  name?: string
  /** Default for the methods given as plain handlers. */
  allowUntrusted?: boolean
  /** Default for the methods given as plain handlers. */
  proxyTarget?: boolean
  /** Default for the methods given as plain handlers. */
  accessHandler?: AccessHandler
  /** Further paths serving the same methods. */
  aliases?: string[]
  /** Served while the database is not online. */
  allowedBeforeInit?: boolean
  /** Served while the daemon shuts down. */
  allowedDuringShutdown?: boolean
}

/**
 * An extension server (SPEC §13): `endpoints` under `/<pathPrefix>/`. With `coreApi` (the
 * default) they are served on the member's listener with the cluster certificate, and with
 * `serveUnix` also on its control socket (what `App.query` talks to); `preInit` (with both)
 * serves them there before init. Without `coreApi` the server listens on `address` (with its
 * own certificate if `dedicatedCertificate`).
 */
export interface ExtensionServer {
  /** An FQDN, not `core`. */
  name: string
  endpoints: Endpoint[]
  /** Default `'1.0'`. */
  pathPrefix?: string
  coreApi?: boolean
  serveUnix?: boolean
  preInit?: boolean
  address?: string
  dedicatedCertificate?: boolean
}

/** Options of {@link App.start}. */
export interface StartOptions {
  /** The application version, reported by `GET /core/1.0`. */
  version: string
  /** Lifecycle hooks. */
  hooks?: Hooks
  /** Schema updates: SQL scripts, in order; never reorder or edit released ones. */
  schemaUpdates?: string[]
  /** API extensions, in order. */
  apiExtensions?: string[]
  /** Interval between heartbeat rounds in ms (default 10 s). */
  heartbeatMs?: number
  /** The application's REST servers; a malformed one rejects with `MC_INVALID_ARGUMENT`. */
  extensionServers?: ExtensionServer[]
  /**
   * Endpoints served under `/1.0/` on the member's listener and its control socket (by a
   * core-API server named `app`): the short form of `extensionServers`.
   */
  endpoints?: Endpoint[]
}

/** The member's status (`GET /core/1.0`). */
export interface Status {
  name: string
  address: string
  version: string
  ready: boolean
  extensions?: string[]
  [key: string]: unknown
}

/** A join token that has not expired. */
export interface TokenRecord {
  name: string
  token: string
  expires_at?: string
  [key: string]: unknown
}

/**
 * One cluster member: a state directory and, once started, its daemon, which runs on the
 * library's threads (not the event loop). A running daemon does not keep Node alive by itself:
 * await `wait()` to serve until it stops. Every method returns a Promise; failures reject
 * with a {@link MicroclusterError}.
 */
export declare class App {
  /** Opens (creating if needed) the state directory; contacts nothing. Same as `App.open`. */
  constructor(options: { stateDir: string })
  /** Opens (creating if needed) the state directory; contacts nothing. */
  static open(options: { stateDir: string }): Promise<App>
  /** Starts the daemon and resolves at once (`MC_CONFLICT` if it runs already); use `ready()` to wait. */
  start(options: StartOptions): Promise<void>
  /** Stops the daemon and waits until it has ended; idempotent. No hook is called afterwards. */
  stop(): Promise<void>
  /** Resolves when the daemon has ended; rejects with what it failed with. */
  wait(): Promise<void>
  /** Resolves when the daemon is ready; `MC_TIMEOUT` after `timeoutMs`, `MC_UNAVAILABLE` if it ended. */
  ready(options?: { timeoutMs?: number }): Promise<void>
  /** The member's status. */
  status(): Promise<Status>
  /** Bootstraps a new cluster with this member as `name` at `address` (`IP:port`). */
  newCluster(name: string, address: string, config?: InitConfig): Promise<void>
  /** Joins the cluster that issued `token`, as `name` at `address`; resolves once online. */
  joinCluster(name: string, address: string, token: string, config?: InitConfig): Promise<void>
  /** Issues a join token for `name`, valid for `expireAfterMs` (default 3 h; 0: until used). */
  newJoinToken(name: string, options?: { expireAfterMs?: number }): Promise<string>
  /** The join tokens that have not expired. */
  joinTokens(): Promise<TokenRecord[]>
  /** Revokes the join token issued for `name` (`MC_NOT_FOUND` if there is none). */
  revokeJoinToken(name: string): Promise<void>
  /** The cluster members with role and status. */
  clusterMembers(): Promise<ClusterMember[]>
  /**
   * The members as this member's own `database/` has them (SPEC §14.1), sorted by name; works
   * with the daemon stopped. `id` is the Raft id as a decimal string.
   */
  localMembers(): Promise<LocalMember[]>
  /**
   * Quorum-loss recovery (SPEC §14.2) with every member stopped: rewrites this member's Raft
   * membership to exactly `members` (`localMembers()` with edited roles and addresses) and
   * resolves with the recovery tarball's path, to copy into every other surviving member's
   * state directory before it starts. An invalid list rejects with `MC_INVALID_ARGUMENT`.
   */
  recover(members: LocalMember[]): Promise<string>
  /** Removes the member `name`; `force` ignores its failures, `address` also removes orphans there. */
  removeClusterMember(name: string, options?: { force?: boolean, address?: string }): Promise<void>
  /** Runs `query` through the SQL API: `{ Results: [...] }`. */
  sql(query: string): Promise<{ Results: unknown[] }>
  /**
   * Sends `method path` (e.g. `'GET'`, `'/1.0/hello?target=m2'`) with the JSON `body` to the
   * member's control socket and resolves with the answer's `metadata`: extension endpoints
   * served there (`serveUnix`) and the REST API alike. An error answer rejects with the code
   * of its status (`MC_NOT_FOUND` for 404, …).
   */
  query(method: string, path: string, body?: unknown): Promise<unknown>
  /**
   * Runs `fn(tx)` as a serializable transaction on the replicated database (linearizable
   * reads) and resolves with what the committed run returned. `fn` may run more than once.
   * Needs the daemon to run in this process (`MC_UNAVAILABLE` otherwise).
   */
  transaction<T>(fn: TxFunction<T>): Promise<T>
  /** `stop()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>
}

/** A log level of the library, most severe first. */
export type LogLevel = 'error' | 'warn' | 'info' | 'debug' | 'trace'

/**
 * Sends the library's log events of `level` (default `'info'`) and more severe to
 * `handler(level, target, message)` on the event loop, or stops sending them (`null`).
 * `target` names the module that logged, such as `microcluster::daemon`. Throws an error with
 * code `MC_INVALID_ARGUMENT` for an unknown level.
 */
export declare function setLogHandler(
  handler: ((level: LogLevel, target: string, message: string) => void) | null,
  level?: LogLevel,
): void

/** A member of the local Raft view. */
export interface LocalMember {
  /** The Raft id, an unsigned 64-bit integer, as a decimal string. */
  id: string
  name: string
  /** `IP:port`; may be changed for `recover`. */
  address: string
  /** `voter`, `stand-by` or `spare`; may be changed for `recover`. */
  role: 'voter' | 'stand-by' | 'spare'
}
