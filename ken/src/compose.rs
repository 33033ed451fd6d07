//! Components composed in one process: several independently written handlers, each with
//! its own state, tables, timers and message types, hosted by one process (one store, one
//! turn loop), addressing each other and remote components by name.
//!
//! A [`Component`] is written like a [`Handler`]: a pure reaction to one input at a time,
//! through a [`ComponentTurn`]. A [`Composite`] hosts several of them and *is* a `Handler`
//! (built on the ordinary `Handler` API, with no engine change), so a turn of a component is
//! an ordinary turn of the process: its state changes, messages, timers and table writes
//! commit together with the batch, or not at all. Every guarantee of the runtime
//! (exactly-once FIFO messages, atomic turns, output validity, crash-restart masked) holds
//! for each component as if it ran alone: that is the composition point of the MaceKen
//! paper (Yoo et al., USENIX ATC 2012).
//!
//! How the pieces map onto one handler:
//! - **Messages** travel as an [`Envelope`] (destination component, sending component, the
//!   message's bincode bytes), the composite's `Handler::Message`. A component sends with
//!   [`ComponentTurn::send`]`(process, component, &msg)`; the destination decodes the bytes
//!   as its own `Component::Message`. Each pair of processes keeps the runtime's
//!   exactly-once FIFO channel, so messages between two components of two processes are
//!   exactly once and in order too.
//! - **Local messages** (to a component of the same process; the runtime refuses a send to
//!   oneself) wait in a queue kept in the composite's durable root state, bounded by
//!   [`LOCAL_QUEUE_MAX`], and are delivered one per turn, oldest first, by a timer of the
//!   composite's own ([`LOCAL_TIMER`], due at once). Enqueuing commits with the sending
//!   turn; the delivery turn removes the message in the same commit as the receiver's
//!   effects. So a local message is delivered exactly once, in its own turn, in the order
//!   sent; a crash loses neither a queued message nor a delivery.
//! - **State**: the composite's root state holds each component's state, encoded, by name.
//!   A turn decodes the state of the component it runs and encodes it back. Keep component
//!   states small (the root is written whenever it changes); large data belongs in tables.
//! - **Tables** are namespaced: a component's table `t` is the process's table
//!   `<component>/t`. **Timers** likewise (`<component>/name`, with their payloads), and so
//!   are **tasks** (`<component>/name`: register the task function under that full name with
//!   [`crate::Config::task`]).
//! - **Client requests** carry the component's name ([`Routed`], made with [`request`]);
//!   the reply is the component's reply encoded, or an error text for a request to an
//!   unknown component or one that does not decode ([`decode_reply`] unwraps it).
//! - **Start** runs every component's [`ComponentInput::Start`] in the process's first turn,
//!   in the order they were added; a **FUSE failure** is heard by every component, in the
//!   same turn.
//!
//! A local message whose delivery turn panics holds the local queue for the rest of the
//! process's life (the composite's timer is held, as the runtime holds any panicking
//! input); the restart delivers it again. The runtime's poison tools (`ken poison`) see
//! the held timer, not the message: fix the component and restart.
//!
//! A message to an unknown component, or one that does not decode as the destination's
//! message type, is consumed (it cannot be handed back), logged with [`Turn::emit`] and
//! counted in the root state ([`CompositeState::undeliverable`]).
//!
//! ```
//! use ken::compose::{AppName, Component, ComponentInput, ComponentTurn, Composite};
//! use serde::{Deserialize, Serialize};
//!
//! /// Counts the words it is sent and tells the `stats` component of its own process.
//! struct Words;
//! /// Keeps a running total.
//! struct Stats;
//!
//! #[derive(Serialize, Deserialize)]
//! struct Count(u64);
//!
//! impl Component for Words {
//!     type State = u64;
//!     type Message = String;
//!     type Request = ();
//!     type Reply = ();
//!     fn on_turn(&self, seen: &mut u64, turn: &mut ComponentTurn<'_, '_, ()>,
//!                input: ComponentInput<String>) {
//!         if let ComponentInput::Message { message, .. } = input {
//!             let n = message.split_whitespace().count() as u64;
//!             *seen += n;
//!             turn.send_local("stats", &Count(n)).expect("the local queue has room");
//!         }
//!     }
//! }
//!
//! impl Component for Stats {
//!     type State = u64;
//!     type Message = Count;
//!     type Request = ();
//!     type Reply = u64;
//!     fn on_turn(&self, total: &mut u64, turn: &mut ComponentTurn<'_, '_, u64>,
//!                input: ComponentInput<Count>) {
//!         match input {
//!             ComponentInput::Message { message: Count(n), .. } => *total += n,
//!             ComponentInput::Request { .. } => turn.reply(total).expect("small"),
//!             _ => {}
//!         }
//!     }
//! }
//!
//! struct WordsApp;
//! impl AppName for WordsApp {
//!     const APP: &'static str = "words";
//! }
//!
//! // A `Handler`: run it with `ken::run(config, words())` like any other.
//! fn words() -> Composite<WordsApp> {
//!     Composite::new().with("words", Words).with("stats", Stats)
//! }
//! # let _ = words();
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::handler::{Handler, Input, SendError, Table, Turn};
use crate::limits;
use crate::task::TaskId;
use crate::{ClientId, FuseError, GroupId, ProcessId, Time};

/// Local messages waiting for delivery in one process, at most (4,096): a send beyond it is
/// refused with [`ComposeError::LocalQueueFull`] (slow down, as with
/// [`Turn::outbox_depth`]).
pub const LOCAL_QUEUE_MAX: usize = 4096;

/// Longest component name: 32 bytes (it prefixes the component's table, timer and task
/// names).
pub const COMPONENT_NAME_BYTES_MAX: usize = 32;

/// The composite's own timer, which delivers the local queue one message per turn. Component
/// timers are named `<component>/<name>`; this name cannot be one of them.
pub const LOCAL_TIMER: &str = "/local";

/// The name and schema version a [`Composite`] records in its store (a [`Handler`] needs
/// them as constants, and a composite is assembled at run time).
pub trait AppName: 'static {
    /// As [`Handler::APP`].
    const APP: &'static str;
    /// As [`Handler::SCHEMA_VERSION`].
    const SCHEMA_VERSION: u32 = 1;
}

/// One component of a [`Composite`]: like a [`Handler`], a pure function of (state, input)
/// to (state, effects), run one input at a time, with no I/O of its own.
pub trait Component: 'static {
    /// The component's durable state, kept (encoded) in the composite's root state. Small.
    type State: Serialize + DeserializeOwned + Default;
    /// The messages this component receives (from components of this or other processes).
    type Message: Serialize + DeserializeOwned;
    /// The client requests routed to this component (`()` if none).
    type Request: Serialize + DeserializeOwned;
    /// Its replies to them (`()` if none).
    type Reply: Serialize + DeserializeOwned;

    /// Runs one turn of this component.
    fn on_turn(
        &self,
        state: &mut Self::State,
        turn: &mut ComponentTurn<'_, '_, Self::Reply>,
        input: ComponentInput<Self::Message, Self::Request>,
    );
}

/// A component's address: a process and a component name in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Address {
    pub process: ProcessId,
    pub component: String,
}

/// The one input of a component's turn.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ComponentInput<M, Q = ()> {
    /// The first turn of a fresh process (every component hears it, in the order added).
    Start,
    /// A message from a component of another process, or of this one (`from.process` is this
    /// process's id), exactly once and in order per sending process.
    Message { from: Address, message: M },
    /// A timer this component set fired, with its payload.
    Timer { name: String, payload: Vec<u8> },
    /// A client request routed to this component: answer with [`ComponentTurn::reply`].
    Request {
        client: ClientId,
        request_no: u64,
        request: Q,
    },
    /// A FUSE group this process belongs to failed (every component hears it).
    FuseFailure { group: GroupId },
    /// This process joined a FUSE group another process created (every component hears
    /// it; see [`Input::FuseJoined`]).
    FuseJoined {
        group: GroupId,
        creator: ProcessId,
        members: Vec<ProcessId>,
    },
    /// A FUSE group this process belongs to became live (every component hears it; see
    /// [`Input::FuseLive`]).
    FuseLive { group: GroupId },
    /// A task this component started succeeded (`name` without the component prefix).
    TaskDone {
        id: TaskId,
        name: String,
        result: Vec<u8>,
    },
}

/// A message between components: the composite's [`Handler::Message`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The destination component.
    pub to: String,
    /// The sending component.
    pub from: String,
    /// The message, bincode-encoded as the destination's `Component::Message`.
    pub bytes: Vec<u8>,
}

/// A client request for one component: the composite's [`Handler::Request`]. Make it with
/// [`request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routed {
    pub component: String,
    /// The request, bincode-encoded as the component's `Component::Request`.
    pub request: Vec<u8>,
}

/// The composite's [`Handler::Reply`]: the component's reply encoded, or why the request was
/// not applied (unknown component, undecodable request). Unwrap it with [`decode_reply`].
pub type RoutedReply = Result<Vec<u8>, String>;

/// A client request for `component` of a composite process.
pub fn request<Q: Serialize>(component: &str, request: &Q) -> Routed {
    Routed {
        component: component.to_string(),
        request: ken_store::codec::encode(request),
    }
}

/// The component's reply in a composite's answer, decoded as `R`.
///
/// # Errors
/// The composite's refusal (unknown component, undecodable request), or a reply that does
/// not decode as `R`.
pub fn decode_reply<R: DeserializeOwned>(reply: RoutedReply) -> Result<R, String> {
    let bytes = reply?;
    ken_store::codec::decode(&bytes).map_err(|e| format!("the reply does not decode: {e}"))
}

/// Why a component's send was refused. Nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ComposeError {
    /// The runtime refused the message (unknown peer, too large).
    #[error(transparent)]
    Send(#[from] SendError),
    /// No component of this name in this process.
    #[error("no component `{0}` in this process")]
    UnknownComponent(String),
    /// [`LOCAL_QUEUE_MAX`] local messages already wait: send later.
    #[error("{0} local messages already wait for delivery (the limit): send later")]
    LocalQueueFull(usize),
}

/// A local message waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalMessage {
    pub to: String,
    pub from: String,
    pub bytes: Vec<u8>,
}

/// The composite's root state: every component's state (encoded, by name), the local queue.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompositeState {
    /// Component name -> its encoded `Component::State` (absent: the default).
    pub components: BTreeMap<String, Vec<u8>>,
    /// Local messages not yet delivered, oldest first.
    pub local: VecDeque<LocalMessage>,
    /// Messages consumed that no component could take (unknown component, undecodable).
    pub undeliverable: u64,
    /// True while the [`LOCAL_TIMER`] is set and has not fired.
    pub local_armed: bool,
}

type CTurn<'a> = Turn<'a, Envelope, RoutedReply>;

/// The context of one component's turn: the process's [`Turn`], seen through the
/// component's namespace. `R` is the component's reply type.
pub struct ComponentTurn<'c, 'a, R> {
    turn: &'c mut CTurn<'a>,
    name: &'c str,
    local: &'c mut VecDeque<LocalMessage>,
    names: &'c [String],
    _reply: PhantomData<fn(R)>,
}

impl<R> std::fmt::Debug for ComponentTurn<'_, '_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentTurn")
            .field("component", &self.name)
            .field("turn", &self.turn)
            .finish_non_exhaustive()
    }
}

impl<'c, 'a, R: Serialize> ComponentTurn<'c, 'a, R> {
    /// This component's name.
    pub fn component(&self) -> &str {
        self.name
    }

    /// This component's address.
    pub fn address(&self) -> Address {
        Address {
            process: self.turn.id().clone(),
            component: self.name.to_string(),
        }
    }

    /// The time of this turn.
    pub fn now(&self) -> Time {
        self.turn.now()
    }

    /// This process's id.
    pub fn id(&self) -> &ProcessId {
        self.turn.id()
    }

    /// The number of this turn over the life of the store.
    pub fn turn_number(&self) -> u64 {
        self.turn.turn_number()
    }

    /// Sends `message` to `component` of `process` (encoded; the receiver decodes it as its
    /// `Component::Message`). To this process's own id it is a local message
    /// ([`ComponentTurn::send_local`]); otherwise it goes as [`Turn::send`] does: committed
    /// with this turn, delivered exactly once, in order per pair of processes.
    pub fn send<T: Serialize>(
        &mut self,
        process: &ProcessId,
        component: &str,
        message: &T,
    ) -> Result<(), ComposeError> {
        if process == self.turn.id() {
            return self.send_local(component, message);
        }
        let envelope = Envelope {
            to: component.to_string(),
            from: self.name.to_string(),
            bytes: ken_store::codec::encode(message),
        };
        self.turn.send(process, &envelope)?;
        Ok(())
    }

    /// Sends `message` to `component` of this process (this one included): queued durably
    /// with this turn and delivered in a turn of its own, exactly once, oldest first.
    pub fn send_local<T: Serialize>(
        &mut self,
        component: &str,
        message: &T,
    ) -> Result<(), ComposeError> {
        if !self.names.iter().any(|n| n == component) {
            return Err(ComposeError::UnknownComponent(component.to_string()));
        }
        if self.local.len() >= LOCAL_QUEUE_MAX {
            return Err(ComposeError::LocalQueueFull(self.local.len()));
        }
        let bytes = ken_store::codec::encode(message);
        if bytes.len() > limits::MESSAGE_BYTES_MAX {
            return Err(SendError::TooLarge {
                bytes: bytes.len(),
                max_bytes: limits::MESSAGE_BYTES_MAX,
            }
            .into());
        }
        self.local.push_back(LocalMessage {
            to: component.to_string(),
            from: self.name.to_string(),
            bytes,
        });
        Ok(())
    }

    /// Messages this process has not had acknowledged by `peer` (all components).
    pub fn outbox_depth(&self, peer: &ProcessId) -> usize {
        self.turn.outbox_depth(peer)
    }

    /// Local messages waiting for delivery (all components), this turn's included.
    pub fn local_depth(&self) -> usize {
        self.local.len()
    }

    /// [`Turn::set_timer`] in this component's namespace.
    pub fn set_timer(&mut self, name: &str, after: Duration) {
        self.turn.set_timer(&self.scoped(name), after);
    }

    /// [`Turn::set_timer_with`] in this component's namespace.
    pub fn set_timer_with(
        &mut self,
        name: &str,
        after: Duration,
        payload: &[u8],
    ) -> Result<(), SendError> {
        let name = self.scoped(name);
        self.turn.set_timer_with(&name, after, payload)
    }

    /// [`Turn::cancel_timer`] in this component's namespace.
    pub fn cancel_timer(&mut self, name: &str) {
        self.turn.cancel_timer(&self.scoped(name));
    }

    /// This component's table `name` (the process's table `<component>/<name>`).
    pub fn table(&mut self, name: &str) -> Table<'_, 'a, Envelope, RoutedReply> {
        let scoped = self.scoped(name);
        self.turn.table(&scoped)
    }

    /// Answers the client request this turn is running ([`Turn::reply`]).
    pub fn reply(&mut self, reply: &R) -> Result<(), SendError> {
        let bytes = ken_store::codec::encode(reply);
        // The Ok wrapper costs a tag and a length: keep within the limit after wrapping.
        if bytes.len() + 16 > limits::REPLY_BYTES_MAX {
            return Err(SendError::TooLarge {
                bytes: bytes.len(),
                max_bytes: limits::REPLY_BYTES_MAX - 16,
            });
        }
        self.turn.reply(&Ok(bytes))
    }

    /// [`Turn::start_task`] in this component's namespace: the task function is the one
    /// registered as `<component>/<name>`.
    pub fn start_task(&mut self, name: &str, payload: &[u8]) -> Result<TaskId, SendError> {
        let name = self.scoped(name);
        self.turn.start_task(&name, payload)
    }

    /// [`Turn::emit`], prefixed with the component's name.
    pub fn emit(&mut self, line: impl AsRef<str>) {
        let line = format!("{}: {}", self.name, line.as_ref());
        self.turn.emit(line);
    }

    /// [`Turn::fuse_create`].
    pub fn fuse_create(&mut self, members: &[ProcessId]) -> Result<GroupId, FuseError> {
        self.turn.fuse_create(members)
    }

    /// [`Turn::fuse_signal`].
    pub fn fuse_signal(&mut self, group: GroupId) {
        self.turn.fuse_signal(group);
    }

    /// [`Turn::random_u64`].
    pub fn random_u64(&mut self) -> u64 {
        self.turn.random_u64()
    }

    /// [`Turn::random_below`].
    pub fn random_below(&mut self, n: u64) -> u64 {
        self.turn.random_below(n)
    }

    fn scoped(&self, name: &str) -> String {
        format!("{}/{name}", self.name)
    }
}

/// An input with its message or request still encoded.
enum RawInput {
    Start,
    Message {
        from: Address,
        bytes: Vec<u8>,
    },
    Timer {
        name: String,
        payload: Vec<u8>,
    },
    Request {
        client: ClientId,
        request_no: u64,
        bytes: Vec<u8>,
    },
    FuseFailure {
        group: GroupId,
    },
    FuseJoined {
        group: GroupId,
        creator: ProcessId,
        members: Vec<ProcessId>,
    },
    FuseLive {
        group: GroupId,
    },
    TaskDone {
        id: TaskId,
        name: String,
        result: Vec<u8>,
    },
}

/// A component with its types erased, as the composite holds it.
trait Erased {
    /// Runs one turn on the encoded state. `Err`: the input or the state did not decode
    /// (nothing ran).
    fn run(
        &self,
        state: &mut Vec<u8>,
        turn: ComponentTurn<'_, '_, ()>,
        input: RawInput,
    ) -> Result<(), String>;
}

struct Typed<C>(C);

impl<C: Component> Erased for Typed<C> {
    fn run(
        &self,
        state_bytes: &mut Vec<u8>,
        turn: ComponentTurn<'_, '_, ()>,
        input: RawInput,
    ) -> Result<(), String> {
        let input = match input {
            RawInput::Start => ComponentInput::Start,
            RawInput::Message { from, bytes } => ComponentInput::Message {
                from,
                message: ken_store::codec::decode(&bytes)
                    .map_err(|e| format!("the message does not decode: {e}"))?,
            },
            RawInput::Timer { name, payload } => ComponentInput::Timer { name, payload },
            RawInput::Request {
                client,
                request_no,
                bytes,
            } => ComponentInput::Request {
                client,
                request_no,
                request: ken_store::codec::decode(&bytes)
                    .map_err(|e| format!("the request does not decode: {e}"))?,
            },
            RawInput::FuseFailure { group } => ComponentInput::FuseFailure { group },
            RawInput::FuseJoined {
                group,
                creator,
                members,
            } => ComponentInput::FuseJoined {
                group,
                creator,
                members,
            },
            RawInput::FuseLive { group } => ComponentInput::FuseLive { group },
            RawInput::TaskDone { id, name, result } => {
                ComponentInput::TaskDone { id, name, result }
            }
        };
        let mut state: C::State = if state_bytes.is_empty() {
            C::State::default()
        } else {
            // The root is CRC-checked by the store: a state that does not decode is a
            // changed type without a migration, a bug. Panicking holds the input (poison).
            ken_store::codec::decode(state_bytes).unwrap_or_else(|e| {
                panic!(
                    "component `{}`: its stored state does not decode: {e}",
                    turn.name
                )
            })
        };
        let mut turn = ComponentTurn::<C::Reply> {
            turn: turn.turn,
            name: turn.name,
            local: turn.local,
            names: turn.names,
            _reply: PhantomData,
        };
        self.0.on_turn(&mut state, &mut turn, input);
        *state_bytes = ken_store::codec::encode(&state);
        Ok(())
    }
}

/// Several [`Component`]s hosted by one process: a [`Handler`] that routes each input to
/// the component it is for. Build it with [`Composite::new`] and [`Composite::with`]; run
/// it with [`crate::run`] or [`crate::testing::Cluster`] like any handler. See the module
/// docs for how inputs, state, tables and timers are routed.
pub struct Composite<N: AppName> {
    names: Vec<String>,
    components: Vec<Box<dyn Erased>>,
    _app: PhantomData<fn(N)>,
}

impl<N: AppName> std::fmt::Debug for Composite<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Composite")
            .field("app", &N::APP)
            .field("components", &self.names)
            .finish()
    }
}

impl<N: AppName> Default for Composite<N> {
    fn default() -> Self {
        Composite::new()
    }
}

impl<N: AppName> Composite<N> {
    /// A composite with no components yet.
    pub fn new() -> Composite<N> {
        Composite {
            names: Vec::new(),
            components: Vec::new(),
            _app: PhantomData,
        }
    }

    /// Adds `component` under `name`.
    ///
    /// # Panics
    /// If `name` is empty, longer than [`COMPONENT_NAME_BYTES_MAX`], contains `/`, or is
    /// taken (a programming error: the composite is built once, at start).
    pub fn with(mut self, name: &str, component: impl Component) -> Composite<N> {
        assert!(
            !name.is_empty() && name.len() <= COMPONENT_NAME_BYTES_MAX && !name.contains('/'),
            "component name `{name}` must be 1 to {COMPONENT_NAME_BYTES_MAX} bytes without `/`"
        );
        assert!(
            !self.names.iter().any(|n| n == name),
            "two components named `{name}`"
        );
        self.names.push(name.to_string());
        self.components.push(Box::new(Typed(component)));
        self
    }

    /// The names of the components, in the order added.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Runs component `i` on `input`. `Err`: the input did not decode.
    fn run(
        &self,
        i: usize,
        state: &mut CompositeState,
        turn: &mut CTurn<'_>,
        input: RawInput,
    ) -> Result<(), String> {
        let name = &self.names[i];
        let mut bytes = state.components.remove(name).unwrap_or_default();
        let cturn = ComponentTurn {
            turn,
            name,
            local: &mut state.local,
            names: &self.names,
            _reply: PhantomData,
        };
        let result = self.components[i].run(&mut bytes, cturn, input);
        state.components.insert(name.clone(), bytes);
        result
    }

    fn undeliverable(&self, state: &mut CompositeState, turn: &mut CTurn<'_>, why: String) {
        state.undeliverable += 1;
        turn.emit(format!("compose: undeliverable: {why}"));
    }

    /// Delivers a message to component `to`, or counts it undeliverable.
    fn deliver(
        &self,
        state: &mut CompositeState,
        turn: &mut CTurn<'_>,
        to: &str,
        from: Address,
        bytes: Vec<u8>,
    ) {
        let Some(i) = self.index(to) else {
            self.undeliverable(state, turn, format!("no component `{to}` (from {from:?})"));
            return;
        };
        if let Err(e) = self.run(
            i,
            state,
            turn,
            RawInput::Message {
                from: from.clone(),
                bytes,
            },
        ) {
            self.undeliverable(state, turn, format!("to `{to}` from {from:?}: {e}"));
        }
    }

    /// A namespaced name's component index and the rest of the name.
    fn split(&self, scoped: &str) -> Option<(usize, String)> {
        let (component, name) = scoped.split_once('/')?;
        Some((self.index(component)?, name.to_string()))
    }
}

impl<N: AppName> Handler for Composite<N> {
    const APP: &'static str = N::APP;
    const SCHEMA_VERSION: u32 = N::SCHEMA_VERSION;
    type State = CompositeState;
    type Message = Envelope;
    type Request = Routed;
    type Reply = RoutedReply;

    fn on_turn(
        &self,
        state: &mut CompositeState,
        turn: &mut Turn<'_, Envelope, RoutedReply>,
        input: Input<Envelope, Routed>,
    ) {
        match input {
            Input::Start => {
                for i in 0..self.components.len() {
                    // Start carries nothing to decode.
                    let _ = self.run(i, state, turn, RawInput::Start);
                }
            }
            Input::Message { from, message, .. } => {
                let address = Address {
                    process: from,
                    component: message.from,
                };
                self.deliver(state, turn, &message.to, address, message.bytes);
            }
            Input::Timer { name, .. } if name == LOCAL_TIMER => {
                state.local_armed = false;
                if let Some(m) = state.local.pop_front() {
                    let from = Address {
                        process: turn.id().clone(),
                        component: m.from,
                    };
                    self.deliver(state, turn, &m.to, from, m.bytes);
                }
            }
            Input::Timer { name, payload } => match self.split(&name) {
                Some((i, name)) => {
                    let _ = self.run(i, state, turn, RawInput::Timer { name, payload });
                }
                None => turn.emit(format!("compose: a timer of no component fired: `{name}`")),
            },
            Input::Request {
                client,
                request_no,
                request,
            } => match self.index(&request.component) {
                Some(i) => {
                    let input = RawInput::Request {
                        client,
                        request_no,
                        bytes: request.request,
                    };
                    match self.run(i, state, turn, input) {
                        Ok(()) => {
                            if turn.effects.reply.is_none() {
                                // A component that does not reply answers `()`.
                                let _ = turn.reply(&Ok(Vec::new()));
                            }
                        }
                        Err(e) => {
                            let _ =
                                turn.reply(&Err(format!("component `{}`: {e}", request.component)));
                        }
                    }
                }
                None => {
                    let _ = turn.reply(&Err(format!(
                        "no component `{}` in this process (it has: {})",
                        request.component,
                        self.names.join(", ")
                    )));
                }
            },
            Input::FuseFailure { group } => {
                for i in 0..self.components.len() {
                    let _ = self.run(i, state, turn, RawInput::FuseFailure { group });
                }
            }
            Input::FuseJoined {
                group,
                creator,
                members,
            } => {
                for i in 0..self.components.len() {
                    let input = RawInput::FuseJoined {
                        group,
                        creator: creator.clone(),
                        members: members.clone(),
                    };
                    let _ = self.run(i, state, turn, input);
                }
            }
            Input::FuseLive { group } => {
                for i in 0..self.components.len() {
                    let _ = self.run(i, state, turn, RawInput::FuseLive { group });
                }
            }
            Input::TaskDone { id, name, result } => match self.split(&name) {
                Some((i, name)) => {
                    let _ = self.run(i, state, turn, RawInput::TaskDone { id, name, result });
                }
                None => turn.emit(format!(
                    "compose: a task of no component finished: `{name}`"
                )),
            },
        }
        if !state.local.is_empty() && !state.local_armed {
            // Due at once: the next local message gets the next turn. Set only when not
            // set: if a delivery turn panics, the engine restores the state from before it
            // (armed) and holds the timer for the rest of this life, so the local queue
            // waits, as a peer's channel does behind a poison message, until a restart
            // fires the durable timer again; other turns never re-arm it and re-run the
            // poison message.
            turn.set_timer(LOCAL_TIMER, Duration::ZERO);
            state.local_armed = true;
        }
    }
}
