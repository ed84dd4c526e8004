'use strict'
// Hand-written facade over the native addon (microcluster.node, built by `npm run build`).
// It only shapes arguments: options objects to positional parameters, user callbacks into
// async functions (so the addon always receives a Promise and never a synchronous throw),
// and the transaction function's result kept on this side. All logic lives in Rust.

const native = require('./microcluster.node')

const HOOKS = [
  'preInit', 'postBootstrap', 'preJoin', 'postJoin', 'onNewMember', 'onStart',
  'preRemove', 'postRemove', 'onHeartbeat', 'onDaemonConfigUpdate', 'onReset',
]

/** Wraps `fn` so that it always returns a Promise (sync throws become rejections). */
function asAsync (fn) {
  return async (...args) => { await fn(...args) }
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
      hooks[name] = asAsync((state, args) => hook(new State(state), args))
    }
    return this.#native.start({
      version: options.version,
      hooks,
      schemaUpdates: options.schemaUpdates,
      apiExtensions: options.apiExtensions,
      heartbeatMs: options.heartbeatMs,
    })
  }

  async stop () { return this.#native.stop() }
  async wait () { return this.#native.wait() }
  async ready (options = {}) { return this.#native.ready(options.timeoutMs) }
  async status () { return this.#native.status() }
  async newCluster (name, address, config) { return this.#native.newCluster(name, address, config) }
  async joinCluster (name, address, token, config) {
    return this.#native.joinCluster(name, address, token, config)
  }

  async newJoinToken (name, options = {}) { return this.#native.newJoinToken(name, options.expireAfterMs) }
  async joinTokens () { return this.#native.joinTokens() }
  async revokeJoinToken (name) { return this.#native.revokeJoinToken(name) }
  async clusterMembers () { return this.#native.clusterMembers() }
  async removeClusterMember (name, options = {}) {
    return this.#native.removeClusterMember(name, options.force, options.address)
  }

  async sql (query) { return this.#native.sql(query) }
  async transaction (fn) { return transact((f) => this.#native.transaction(f), fn) }
  async [Symbol.asyncDispose] () { return this.stop() }
}

module.exports = { App, State }
