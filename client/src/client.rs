//! [`Client`]: a cheap, clonable handle to one broker connection.

use std::sync::Arc;

use herald_protocol::{Frame, HelloOk};
use tokio::net::ToSocketAddrs;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::connection::{self, ConnectOptions, ConnectionEvent, ConnectionState, Request, Route};
use crate::error::{Error, Result};

/// A connection to a broker. Clones share the connection; every call may run concurrently
/// with the others, and a slow call (a long-poll fetch) never holds up a fast one. When the
/// connection breaks the client connects again on its own (see [`ConnectOptions::reconnect`]);
/// calls made meanwhile wait for the new connection.
///
/// ```no_run
/// # async fn run() -> herald_client::Result<()> {
/// let client = herald_client::Client::connect("127.0.0.1:7420").await?;
/// client.create_topic("orders", 3).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    requests: mpsc::Sender<Request>,
    session: Arc<HelloOk>,
    state: watch::Receiver<ConnectionState>,
    events: broadcast::Sender<ConnectionEvent>,
}

impl Client {
    /// Connects with default options.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client> {
        Client::connect_with(addr, ConnectOptions::default()).await
    }

    /// Connects with the given options. The first connection must succeed; later breaks
    /// are handled as [`ConnectOptions::reconnect`] says.
    pub async fn connect_with(addr: impl ToSocketAddrs, options: ConnectOptions) -> Result<Client> {
        let handle = connection::open(addr, options).await?;
        Ok(Client {
            requests: handle.requests,
            session: Arc::new(handle.session),
            state: handle.state,
            events: handle.events,
        })
    }

    /// What the broker granted in the first connection's `HelloOk`: version, heartbeat,
    /// limits. Later connections report theirs in [`ConnectionEvent::Connected`].
    pub fn session(&self) -> &HelloOk {
        &self.session
    }

    /// Where the connection stands now.
    pub fn connection_state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    /// Connection changes from now on: connected, disconnected, reconnecting, closed.
    /// A receiver that falls more than 64 events behind skips the oldest.
    pub fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
    }

    /// Waits until a connection newer than `epoch` is up; `Closed` if the client stops
    /// first.
    pub(crate) async fn connected_after(&self, epoch: u64) -> Result<u64> {
        let mut state = self.state.clone();
        let now = state
            .wait_for(|s| s.closed || (s.connected && s.epoch > epoch))
            .await
            .map_err(|_| Error::Closed("the connection task has ended".into()))?;
        if now.closed {
            return Err(Error::Closed("the client has stopped".into()));
        }
        Ok(now.epoch)
    }

    /// Queues a request in order and returns where its reply will arrive.
    pub(crate) async fn start(
        &self,
        frame: impl Into<Frame>,
    ) -> Result<oneshot::Receiver<Result<Frame>>> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request {
                frame: frame.into(),
                reply,
                route: None,
            })
            .await
            .map_err(|_| Error::Closed("the connection task has ended".into()))?;
        Ok(rx)
    }

    /// Sends a `Subscribe` whose deliveries go to `deliveries`, and waits for its reply;
    /// returns it with the epoch of the connection that took the subscription.
    pub(crate) async fn subscribe_call(
        &self,
        frame: herald_protocol::Subscribe,
        deliveries: mpsc::Sender<herald_protocol::Deliver>,
    ) -> Result<(Frame, u64)> {
        let (reply, rx) = oneshot::channel();
        let (epoch, epoch_rx) = oneshot::channel();
        self.requests
            .send(Request {
                frame: frame.into(),
                reply,
                route: Some(Route { deliveries, epoch }),
            })
            .await
            .map_err(|_| Error::Closed("the connection task has ended".into()))?;
        let reply = await_reply(rx).await?;
        let epoch = epoch_rx
            .await
            .map_err(|_| Error::Protocol(format!("{:?} for a subscription", reply.opcode())))?;
        Ok((reply, epoch))
    }

    /// Sends a request and waits for its reply.
    pub(crate) async fn call(&self, frame: impl Into<Frame>) -> Result<Frame> {
        await_reply(self.start(frame).await?).await
    }
}

/// Waits for a reply started with [`Client::start`].
pub(crate) async fn await_reply(rx: oneshot::Receiver<Result<Frame>>) -> Result<Frame> {
    rx.await
        .map_err(|_| Error::Closed("the connection task has ended".into()))?
}

/// Unwraps the reply variant a call expects, or reports what came instead.
macro_rules! expect_reply {
    ($frame:expr, $variant:ident) => {
        match $frame {
            herald_protocol::Frame::$variant(reply) => Ok(reply),
            other => Err($crate::Error::Protocol(format!(
                concat!("expected ", stringify!($variant), ", got {:?}"),
                other.opcode()
            ))),
        }
    };
}
pub(crate) use expect_reply;
