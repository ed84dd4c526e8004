'use strict'
// Hand-written facade over the native addon (microcluster.node, built by `npm run build`).
// It only shapes arguments: options objects to positional parameters, user callbacks into
// async functions (so the addon always receives a Promise and never a synchronous throw),
// the transaction function's result kept on this side, and a hook's error given back as the
// `cause` of the lifecycle step it failed. All logic lives in Rust.

const native = require('./microcluster.node')

const HOOKS = [
  'preInit', 'postBootstrap', 'preJoin', 'postJoin', 'onNewMember', 'onStart',
  'preRemove', 'postRemove', 'onHeartbeat', 'onDaemonConfigUpdate', 'onReset',
]

// A hook's error travels through the library as text, marked with this process and an id, so
// that the caller of the lifecycle step gets it back as `cause` (hooks that ran in another
// process leave only their message).
const HOOK_MARK = / ?\[hook-error:(\d+):(\d+)\]/g
const KEPT_HOOK_ERRORS = 32
const hookErrors = new Map()
let lastHookError = 0

/** Wraps the hook `fn` so that it returns a Promise whose rejection carries the mark. */
function asHook (fn) {
  return async (...args) => {
    try {
      await fn(...args)
    } catch (err) {
      const id = ++lastHookError
      hookErrors.set(id, err)
      if (hookErrors.size > KEPT_HOOK_ERRORS) hookErrors.delete(hookErrors.keys().next().value)
      const message = err instanceof Error ? err.message : String(err)
      throw new Error(`${message} [hook-error:${process.pid}:${id}]`)
    }
  }
}

/** `promise`, with a hook's error as the `cause` of a rejection that carries its mark. */
async function withHookCause (promise) {
  try {
    return await promise
  } catch (err) {
    if (err instanceof Error && typeof err.message === 'string') {
      for (const [, pid, id] of err.message.matchAll(HOOK_MARK)) {
        if (Number(pid) === process.pid && hookErrors.has(Number(id))) {
          err.cause = hookErrors.get(Number(id))
          hookErrors.delete(Number(id))
        }
      }
      err.message = err.message.replace(HOOK_MARK, '')
    }
    throw err
  }
}

/**
 * Runs `run(wrapped)`, where `wrapped(tx)` records what `fn(tx)` returned or threw, and gives
 * back the outcome of the last run (the one that counted: core may run it more than once).
 */
async function transact (run, fn) {
  if (typeof fn !== 'function') throw new TypeError('transaction expects a function')
  let result
  let thrown
  let failed = false
  try {
    await run(async (tx) => {
      failed = false
      try {
        result = await fn(tx)
      } catch (err) {
        failed = true
        thrown = err
        throw err
      }
    })
  } catch (err) {
    throw failed ? thrown : err
  }
  return result
}

class State {
  #native
  constructor (nativeState) { this.#native = nativeState }
  get name () { return this.#native.name }
  get address () { return this.#native.address }
  async clusterMembers () { return this.#native.clusterMembers() }
  async transaction (fn) { return transact((f) => this.#native.transaction(f), fn) }
}

const METHOD_FLAGS = ['allowUntrusted', 'proxyTarget', 'accessHandler']

/** `value` as plain JSON (what `JSON.stringify` keeps; `undefined` becomes `null`). */
function plainJson (value) {
  return value === undefined ? null : JSON.parse(JSON.stringify(value))
}

/** The core-API server that serves `start({ endpoints })` under `/1.0/`. */
const DEFAULT_SERVER = 'app'

/**
 * Core's JSON description of `servers` (ServerSpec list) and the one dispatcher that answers
 * every endpoint: it calls the handler of (server, endpoint, method) — or, with `access`, its
 * access handler — with the request and resolves with `{ ok }` or
 * `{ error: { message, status, code } }` (never rejects).
 */
function compileServers (servers) {
  if (!Array.isArray(servers)) throw new TypeError('extensionServers must be an array')
  const handlers = new Map()
  const key = (server, endpoint, method) => JSON.stringify([server, endpoint, method])
  const specs = servers.map((server) => {
    const endpoints = (server.endpoints || []).map((endpoint) => {
      const name = endpoint.name || endpoint.path
      const methods = {}
      for (const [method, action] of Object.entries(endpoint.methods || {})) {
        const { handler, ...flags } = typeof action === 'function' ? { handler: action } : action
        if (typeof handler !== 'function') {
          throw new TypeError(`The ${method} handler of endpoint ${name} must be a function`)
        }
        for (const flag of Object.keys(flags)) {
          if (!METHOD_FLAGS.includes(flag)) throw new TypeError(`Unknown option ${flag} of the ${method} handler of endpoint ${name}`)
        }
        const accessHandler = flags.accessHandler ?? endpoint.accessHandler
        if (accessHandler != null && typeof accessHandler !== 'function') {
          throw new TypeError(`The accessHandler of the ${method} handler of endpoint ${name} must be a function`)
        }
        const upper = method.toUpperCase()
        methods[upper] = {
          allow_untrusted: Boolean(flags.allowUntrusted ?? endpoint.allowUntrusted),
          proxy_target: Boolean(flags.proxyTarget ?? endpoint.proxyTarget),
          access_handler: typeof accessHandler === 'function',
        }
        handlers.set(key(server.name, name, upper), { handler, accessHandler })
      }
      return {
        name,
        path: endpoint.path,
        aliases: endpoint.aliases || [],
        allowed_before_init: Boolean(endpoint.allowedBeforeInit),
        allowed_during_shutdown: Boolean(endpoint.allowedDuringShutdown),
        methods,
      }
    })
    return {
      name: server.name,
      address: server.address || '',
      core_api: server.coreApi ?? true,
      pre_init: Boolean(server.preInit),
      serve_unix: Boolean(server.serveUnix),
      dedicated_certificate: Boolean(server.dedicatedCertificate),
      resources: [{ path_prefix: server.pathPrefix ?? '1.0', endpoints }],
    }
  })
  const dispatch = async (nativeState, server, endpoint, request, access) => {
    try {
      const action = handlers.get(key(server, endpoint, request.method))
      const handler = access ? action?.accessHandler : action?.handler
      if (typeof handler !== 'function') {
        const what = access ? 'access handler' : 'handler'
        throw Object.assign(new Error(`No ${request.method} ${what} for endpoint ${endpoint}`), { code: 'MC_NOT_FOUND' })
      }
      return { ok: plainJson(await handler({ ...request, state: new State(nativeState) })) }
    } catch (err) {
      const error = { message: String(err instanceof Error ? err.message : err) }
      if (typeof err?.status === 'number') error.status = err.status
      if (typeof err?.code === 'string') error.code = err.code
      return { error }
    }
  }
  return { specs: JSON.stringify(specs), dispatch }
}

class App {
  #native
  constructor (options) {
    const stateDir = options && options.stateDir
    if (typeof stateDir !== 'string') throw new TypeError('App needs { stateDir: string }')
    this.#native = native.App.open(stateDir)
  }

  static async open (options) { return new App(options) }

  async start (options = {}) {
    const hooks = {}
    for (const name of HOOKS) {
      const hook = options.hooks && options.hooks[name]
      if (hook === undefined || hook === null) continue
      if (typeof hook !== 'function') throw new TypeError(`hooks.${name} must be a function`)
      hooks[name] = asHook((state, args) => hook(new State(state), args))
    }
    if (options.extensionServers !== undefined && !Array.isArray(options.extensionServers)) {
      throw new TypeError('extensionServers must be an array')
    }
    if (options.endpoints !== undefined && !Array.isArray(options.endpoints)) {
      throw new TypeError('endpoints must be an array')
    }
    const all = [...(options.extensionServers || [])]
    if (options.endpoints && options.endpoints.length > 0) {
      all.push({ name: DEFAULT_SERVER, pathPrefix: '1.0', serveUnix: true, endpoints: options.endpoints })
    }
    const servers = all.length > 0 ? compileServers(all) : undefined
    return this.#native.start({
      version: options.version,
      hooks,
      schemaUpdates: options.schemaUpdates,
      apiExtensions: options.apiExtensions,
      heartbeatMs: options.heartbeatMs,
      extensionServers: servers && servers.specs,
      endpointHandler: servers && servers.dispatch,
    })
  }

  async stop () { return withHookCause(this.#native.stop()) }
  async wait () { return withHookCause(this.#native.wait()) }
  async ready (options = {}) { return withHookCause(this.#native.ready(options.timeoutMs)) }
  async status () { return this.#native.status() }
  async newCluster (name, address, config) {
    return withHookCause(this.#native.newCluster(name, address, config))
  }

  async joinCluster (name, address, token, config) {
    return withHookCause(this.#native.joinCluster(name, address, token, config))
  }

  async newJoinToken (name, options = {}) { return this.#native.newJoinToken(name, options.expireAfterMs) }
  async joinTokens () { return this.#native.joinTokens() }
  async revokeJoinToken (name) { return this.#native.revokeJoinToken(name) }
  async clusterMembers () { return this.#native.clusterMembers() }
  async localMembers () { return this.#native.localMembers() }
  async recover (members) {
    if (!Array.isArray(members)) throw new TypeError('recover expects an array of members')
    return this.#native.recover(members)
  }

  async removeClusterMember (name, options = {}) {
    return withHookCause(this.#native.removeClusterMember(name, options.force, options.address))
  }

  async sql (query) { return this.#native.sql(query) }
  async query (method, path, body) { return this.#native.query(method, path, body === undefined ? undefined : plainJson(body)) }
  async transaction (fn) { return transact((f) => this.#native.transaction(f), fn) }
  async [Symbol.asyncDispose] () { return this.stop() }
}

/**
 * Sends the library's log events of `level` ('error', 'warn', 'info' — the default —, 'debug',
 * 'trace') and more severe to `handler(level, target, message)` on the event loop, or stops
 * sending them (`null`). An exception the handler throws is ignored.
 */
function setLogHandler (handler, level = 'info') {
  if (handler !== null && typeof handler !== 'function') {
    throw new TypeError('setLogHandler expects a function or null')
  }
  const safe = handler && ((eventLevel, target, message) => {
    try { handler(eventLevel, target, message) } catch (err) { /* a log handler must not throw */ }
  })
  native.setLogHandler(safe, level)
}

module.exports = { App, State, setLogHandler }
