//! [`Client`]: a cheap, clonable handle to one broker connection.

use std::sync::Arc;

use herald_protocol::{Frame, HelloOk};
use tokio::net::ToSocketAddrs;
use tokio::sync::{mpsc, oneshot};

use crate::connection::{self, ConnectOptions, Request};
use crate::error::{Error, Result};

/// A connection to a broker. Clones share the connection; every call may run concurrently
/// with the others, and a slow call (a long-poll fetch) never holds up a fast one.
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
}

impl Client {
    /// Connects with default options.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client> {
        Client::connect_with(addr, ConnectOptions::default()).await
    }

    /// Connects with the given options.
    pub async fn connect_with(addr: impl ToSocketAddrs, options: ConnectOptions) -> Result<Client> {
        let (requests, session) = connection::open(addr, &options).await?;
        Ok(Client {
            requests,
            session: Arc::new(session),
        })
    }

    /// What the broker granted in its `HelloOk`: version, heartbeat, limits.
    pub fn session(&self) -> &HelloOk {
        &self.session
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
                deliveries: None,
            })
            .await
            .map_err(|_| Error::Closed("the connection task has ended".into()))?;
        Ok(rx)
    }

    /// Sends a `Subscribe` whose deliveries go to `deliveries`, and waits for its reply.
    pub(crate) async fn subscribe_call(
        &self,
        frame: herald_protocol::Subscribe,
        deliveries: mpsc::UnboundedSender<herald_protocol::Deliver>,
    ) -> Result<Frame> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request {
                frame: frame.into(),
                reply,
                deliveries: Some(deliveries),
            })
            .await
            .map_err(|_| Error::Closed("the connection task has ended".into()))?;
        await_reply(rx).await
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
