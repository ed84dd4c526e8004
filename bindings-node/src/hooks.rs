//! Lifecycle hooks as JavaScript functions, called through weak, non-error-first
//! ThreadsafeFunctions whose Promises core's async [`Hooks`] awaits, and the `State` they get.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use microcluster::hooks::{HookFuture, InitConfig, RoleChange};
use microcluster::member_config::MemberConfig;
use microcluster::types::ClusterMemberLocal;
use microcluster::{Error, HookEvent, Hooks, State};
use napi::bindgen_prelude::{FnArgs, Object, Promise};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::{Env, Status};
use napi_derive::napi;

use crate::error::promise;
use crate::tx::{TxFunction, closure};

/// A hook as the addon receives it: `(state, args) => Promise<void>`, weak (it does not keep
/// Node alive) and not error-first (the facade makes every user hook async).
pub(crate) type HookFunction = ThreadsafeFunction<
    FnArgs<(JsState, serde_json::Value)>,
    Promise<()>,
    FnArgs<(JsState, serde_json::Value)>,
    Status,
    false,
    true,
>;

/// The hooks of `app.start({ hooks })`; each is optional.
#[napi(object, object_to_js = false)]
pub struct NativeHooks {
    /// PreInit: `{ bootstrap, config }`.
    #[napi(ts_type = "(state: State, args: object) => Promise<void>")]
    pub pre_init: Option<HookFunction>,
    /// PostBootstrap: `{ config }`.
    #[napi(ts_type = "(state: State, args: object) => Promise<void>")]
    pub post_bootstrap: Option<HookFunction>,
    /// PreJoin: `{ config }`.
    #[napi(ts_type = "(state: State, args: object) => Promise<void>")]
    pub pre_join: Option<HookFunction>,
    /// PostJoin: `{ config }`.
    #[napi(ts_type = "(state: State, args: object) => Promise<void>")]
    pub post_join: Option<HookFunction>,
    /// OnNewMember: `{ new_member }`.
    #[napi(ts_type = "(state: State, args: object) => Promise<void>")]
    pub on_new_member: Option<HookFunction>,
    /// OnStart: `{}`.
    #[napi(ts_type = "(state: State, args: object) => Promise<void>")]
    pub on_start: Option<HookFunction>,
    /// PreRemove: `{ force }`.
    #[napi(ts_type = "(state: State, args: object) => Promise<void>")]
    pub pre_remove: Option<HookFunction>,
    /// PostRemove: `{ force }`.
    #[napi(ts_type = "(state: State, args: object) => Promise<void>")]
    pub post_remove: Option<HookFunction>,
    /// OnHeartbeat: `{ roles }`.
    #[napi(ts_type = "(state: State, args: object) => Promise<void>")]
    pub on_heartbeat: Option<HookFunction>,
    /// OnDaemonConfigUpdate: `{ config }`.
    #[napi(ts_type = "(state: State, args: object) => Promise<void>")]
    pub on_daemon_config_update: Option<HookFunction>,
    /// The reset event: `{ reason }`; its outcome is ignored.
    #[napi(ts_type = "(state: State, args: object) => Promise<void>")]
    pub on_reset: Option<HookFunction>,
}

/// Picks one hook of [`NativeHooks`].
type Hook = fn(&NativeHooks) -> &Option<HookFunction>;

/// Core's [`Hooks`] over [`NativeHooks`]; refuses to call JavaScript once `closed` is set
/// (by `app.stop()`).
pub(crate) struct JsHooks {
    hooks: Arc<NativeHooks>,
    closed: Arc<AtomicBool>,
}

impl JsHooks {
    /// Hooks that stop calling JavaScript once `closed` is set.
    pub(crate) fn new(hooks: NativeHooks, closed: Arc<AtomicBool>) -> JsHooks {
        JsHooks {
            hooks: Arc::new(hooks),
            closed,
        }
    }

    /// Calls `function` (if given) with the state and the event's arguments and awaits its
    /// Promise; a rejection fails the hook with its message.
    fn run(&self, hook: Hook, state: State, event: HookEvent) -> HookFuture {
        if hook(&self.hooks).is_none() {
            return Box::pin(async { Ok(()) });
        }
        let hooks = self.hooks.clone();
        let closed = self.closed.clone();
        Box::pin(async move {
            let Some(function) = hook(&hooks) else {
                return Ok(());
            };
            let name = event.name();
            if closed.load(Ordering::SeqCst) {
                return Err(Error::unavailable(format!(
                    "The {name} hook was not run: the app was stopped"
                )));
            }
            let failed = |err: napi::Error| {
                Error::internal(format!("The {name} hook failed: {}", err.reason))
            };
            let settled = function
                .call_async_catch(FnArgs::from((JsState { state }, event.args_json())))
                .await
                .map_err(failed)?;
            settled.await.map_err(failed)
        })
    }
}

impl Hooks for JsHooks {
    fn pre_init(&self, state: State, bootstrap: bool, config: InitConfig) -> HookFuture {
        let event = HookEvent::PreInit { bootstrap, config };
        self.run(|hooks| &hooks.pre_init, state, event)
    }

    fn post_bootstrap(&self, state: State, config: InitConfig) -> HookFuture {
        let event = HookEvent::PostBootstrap { config };
        self.run(|hooks| &hooks.post_bootstrap, state, event)
    }

    fn pre_join(&self, state: State, config: InitConfig) -> HookFuture {
        self.run(
            |hooks| &hooks.pre_join,
            state,
            HookEvent::PreJoin { config },
        )
    }

    fn post_join(&self, state: State, config: InitConfig) -> HookFuture {
        self.run(
            |hooks| &hooks.post_join,
            state,
            HookEvent::PostJoin { config },
        )
    }

    fn on_new_member(&self, state: State, new_member: ClusterMemberLocal) -> HookFuture {
        let event = HookEvent::OnNewMember { new_member };
        self.run(|hooks| &hooks.on_new_member, state, event)
    }

    fn on_start(&self, state: State) -> HookFuture {
        self.run(|hooks| &hooks.on_start, state, HookEvent::OnStart)
    }

    fn pre_remove(&self, state: State, force: bool) -> HookFuture {
        self.run(
            |hooks| &hooks.pre_remove,
            state,
            HookEvent::PreRemove { force },
        )
    }

    fn post_remove(&self, state: State, force: bool) -> HookFuture {
        self.run(
            |hooks| &hooks.post_remove,
            state,
            HookEvent::PostRemove { force },
        )
    }

    fn on_heartbeat(&self, state: State, roles: BTreeMap<String, RoleChange>) -> HookFuture {
        self.run(
            |hooks| &hooks.on_heartbeat,
            state,
            HookEvent::OnHeartbeat { roles },
        )
    }

    fn on_daemon_config_update(&self, state: State, config: MemberConfig) -> HookFuture {
        let event = HookEvent::OnDaemonConfigUpdate { config };
        self.run(|hooks| &hooks.on_daemon_config_update, state, event)
    }

    fn on_reset(&self, state: State, reason: String) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let run = self.run(|hooks| &hooks.on_reset, state, HookEvent::Reset { reason });
        Box::pin(async move {
            let _ = run.await;
        })
    }
}

/// What a hook can see and do on its member.
#[napi(js_name = "State")]
pub struct JsState {
    state: State,
}

impl JsState {
    /// The JavaScript view of `state`.
    pub(crate) fn new(state: State) -> JsState {
        JsState { state }
    }
}

#[napi]
impl JsState {
    /// This member's name (the host name before init).
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.state.name()
    }

    /// This member's address, `IP:port` (empty before init).
    #[napi(getter)]
    pub fn address(&self) -> String {
        self.state.address()
    }

    /// The cluster members as the database has them (without status).
    #[napi(catch_unwind, ts_return_type = "Promise<Array<object>>")]
    pub fn cluster_members<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        let state = self.state.clone();
        promise(env, async move {
            let members = state.cluster_members().await?;
            serde_json::to_value(members).map_err(|err| Error::internal(err.to_string()))
        })
    }

    /// Runs `function(tx)` as a serializable transaction (see `App.transaction`).
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn transaction<'env>(
        &self,
        env: &'env Env,
        #[napi(ts_arg_type = "(tx: Tx) => Promise<void>")] function: TxFunction,
    ) -> napi::Result<Object<'env>> {
        let state = self.state.clone();
        let run = closure(function);
        promise(env, async move { state.transaction(run).await })
    }
}
