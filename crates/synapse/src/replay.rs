//! Replaying a request that its backend never answered (the `retry_unanswered` option).
//!
//! A backend killed with requests in flight takes them with it: its kernel closes or resets
//! connections it had accepted, and without this option their clients see a failure even
//! though other backends are healthy. With the option on, a connection starts with a *first
//! exchange*: synapse forwards what the client sends and keeps a copy of it (up to
//! [`KEEP_AT_MOST`] bytes) until the backend sends its first byte. If the backend closes or
//! resets the connection before that, [`first_exchange`] says so and the forwarder connects
//! to another backend and sends the kept bytes again (a client half-close included). That
//! includes a backend that goes away before the client has said anything: the client has
//! not been served, and the connection moves to another backend with nothing to replay.
//!
//! The phase ends, and the connection is relayed as usual, as soon as the backend has
//! something to send (a reply, or a greeting of a protocol where the server speaks first),
//! or the client has sent more than is kept. The backend's bytes are only looked at with
//! `MSG_PEEK`, so the relay reads them as if this phase had never happened.
//!
//! Replaying is only right for requests that may be sent twice: synapse cannot know
//! whether the backend acted on a request before it died. That is why it is opt-in.

use std::io;
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::time::Duration;

use bytes::BufMut;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Client bytes kept for a replay at most: one relay buffer. A client that sends more
/// before the backend answers (an upload) is relayed without the safety net.
pub const KEEP_AT_MOST: usize = 64 * 1024;

/// How much is read from the client per wakeup in the first exchange.
const READ_CHUNK: usize = 16 * 1024;

/// What the client has sent so far on a connection still in its first exchange.
#[derive(Debug, Default)]
pub struct Kept {
    bytes: Vec<u8>,
    client_closed: bool,
}

impl Kept {
    /// Whether the client has sent anything yet.
    pub fn has_request(&self) -> bool {
        !self.bytes.is_empty()
    }
}

/// How a first exchange ended.
#[derive(Debug)]
pub enum FirstExchange {
    /// The backend has something to send, or the client sent more than is kept (or
    /// nothing, then closed, and so did the backend): relay from here.
    Relay,
    /// The backend closed or reset the connection before a byte came back (and before
    /// the client went away). Everything the client sent, if anything, is in [`Kept`].
    Unanswered(io::Error),
    /// The client reset its connection or could not be read from.
    ClientFailed(io::Error),
    /// No byte moved either way for the idle timeout.
    Idle,
}

/// Runs the first exchange on a freshly connected `upstream`, sending it what `kept`
/// already holds (a replay) before anything new from the client.
pub async fn first_exchange(
    client: &TcpStream,
    upstream: &TcpStream,
    kept: &mut Kept,
    idle: Option<Duration>,
) -> FirstExchange {
    // Bytes of `kept` written to this upstream, and whether its write half is shut.
    let mut written = 0;
    let mut shut = false;
    // Only armed when there is an idle timeout; far in the future otherwise.
    let far = Duration::from_secs(86_400 * 365);
    let timer = tokio::time::sleep(idle.unwrap_or(far));
    tokio::pin!(timer);
    loop {
        if written == kept.bytes.len() && kept.client_closed && !shut {
            if let Err(e) = SockRef::from(upstream).shutdown(Shutdown::Write) {
                return FirstExchange::Unanswered(e);
            }
            shut = true;
        }
        let to_write = written < kept.bytes.len();
        if !to_write && !kept.client_closed && kept.bytes.len() >= KEEP_AT_MOST {
            return FirstExchange::Relay;
        }
        let to_read = !to_write && !kept.client_closed;
        let progress = tokio::select! {
            biased;
            ready = upstream.writable(), if to_write => {
                if let Err(e) = ready {
                    return FirstExchange::Unanswered(e);
                }
                match upstream.try_write(&kept.bytes[written..]) {
                    Ok(n) => {
                        written += n;
                        true
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(e) => return FirstExchange::Unanswered(e),
                }
            }
            ready = client.readable(), if to_read => {
                if let Err(e) = ready {
                    return FirstExchange::ClientFailed(e);
                }
                // Read straight into the spare capacity: no zeroing, and no copy to grow
                // the buffer unless the request is bigger than one chunk.
                let left = KEEP_AT_MOST - kept.bytes.len();
                if kept.bytes.capacity() == kept.bytes.len() {
                    kept.bytes.reserve(READ_CHUNK.min(left));
                }
                let room = (kept.bytes.capacity() - kept.bytes.len()).min(left);
                match client.try_read_buf(&mut (&mut kept.bytes).limit(room)) {
                    Ok(0) => {
                        kept.client_closed = true;
                        true
                    }
                    Ok(_) => true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(e) => return FirstExchange::ClientFailed(e),
                }
            }
            ready = upstream.readable() => {
                if let Err(e) = ready {
                    return FirstExchange::Unanswered(e);
                }
                match upstream.try_io(Interest::READABLE, || peek_one(upstream)) {
                    Ok(0) if kept.client_closed && !kept.has_request() => {
                        // The client left without a word, and the backend followed.
                        return FirstExchange::Relay;
                    }
                    Ok(0) => {
                        return FirstExchange::Unanswered(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "closed the connection before answering",
                        ))
                    }
                    Ok(_) => return finish(upstream, &kept.bytes[written..]).await,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(e) => return FirstExchange::Unanswered(e),
                }
            }
            _ = &mut timer, if idle.is_some() => return FirstExchange::Idle,
        };
        if let (true, Some(idle)) = (progress, idle) {
            timer.as_mut().reset(Instant::now() + idle);
        }
    }
}

/// Hands the connection to the relay once the backend has answered: what the client sent
/// and was not written yet goes first (the relay only sees what is still in the socket).
async fn finish(upstream: &TcpStream, mut rest: &[u8]) -> FirstExchange {
    while !rest.is_empty() {
        if upstream.writable().await.is_err() {
            // The relay meets the same error on its first write and resets both sides.
            break;
        }
        match upstream.try_write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    FirstExchange::Relay
}

/// Looks at the backend's next byte without taking it: `Ok(0)` is its FIN.
fn peek_one(upstream: &TcpStream) -> io::Result<usize> {
    let mut byte = [MaybeUninit::<u8>::uninit()];
    SockRef::from(upstream).peek(&mut byte)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair: (the side synapse holds, the far end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (near, far) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (near.unwrap(), far.unwrap().0)
    }

    #[tokio::test]
    async fn an_answer_ends_the_exchange_and_stays_in_the_socket_for_the_relay() {
        let (client_far, client) = pair().await;
        let (upstream, mut backend) = pair().await;
        let mut client_far = client_far;
        client_far.write_all(b"GET /").await.unwrap();
        let mut kept = Kept::default();
        let backend_side = async {
            let mut buf = [0u8; 5];
            backend.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"GET /");
            backend.write_all(b"200").await.unwrap();
        };
        let (ended, ()) = tokio::join!(
            first_exchange(&client, &upstream, &mut kept, None),
            backend_side
        );
        assert!(matches!(ended, FirstExchange::Relay), "{ended:?}");
        let mut buf = [0u8; 3];
        let mut upstream = upstream;
        upstream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"200");
    }

    #[tokio::test]
    async fn a_backend_closing_before_answering_leaves_the_request_to_replay() {
        let (mut client_far, client) = pair().await;
        let (upstream, mut backend) = pair().await;
        client_far.write_all(b"GET /").await.unwrap();
        client_far.shutdown().await.unwrap();
        let mut kept = Kept::default();
        let backend_side = async {
            let mut got = Vec::new();
            backend.read_to_end(&mut got).await.unwrap();
            drop(backend);
            got
        };
        let (ended, got) = tokio::join!(
            first_exchange(&client, &upstream, &mut kept, None),
            backend_side
        );
        assert!(matches!(ended, FirstExchange::Unanswered(_)), "{ended:?}");
        assert_eq!(got, b"GET /");

        // The replay: a second backend gets the same bytes and the half-close.
        let (upstream2, mut backend2) = pair().await;
        let backend_side = async {
            let mut got = Vec::new();
            backend2.read_to_end(&mut got).await.unwrap();
            backend2.write_all(b"200").await.unwrap();
            got
        };
        let (ended, got) = tokio::join!(
            first_exchange(&client, &upstream2, &mut kept, None),
            backend_side
        );
        assert!(matches!(ended, FirstExchange::Relay), "{ended:?}");
        assert_eq!(got, b"GET /");
    }

    #[tokio::test]
    async fn a_backend_gone_before_the_client_spoke_is_unanswered_too() {
        let (_client_far, client) = pair().await;
        let (upstream, backend) = pair().await;
        drop(backend);
        let mut kept = Kept::default();
        let ended = first_exchange(&client, &upstream, &mut kept, None).await;
        assert!(matches!(ended, FirstExchange::Unanswered(_)), "{ended:?}");
        assert!(!kept.has_request());
    }

    #[tokio::test]
    async fn a_client_leaving_without_a_word_is_relayed_once_the_backend_follows() {
        let (client_far, client) = pair().await;
        let (upstream, mut backend) = pair().await;
        drop(client_far);
        let backend_side = async {
            let mut got = Vec::new();
            backend.read_to_end(&mut got).await.unwrap();
            drop(backend);
            got
        };
        let mut kept = Kept::default();
        let (ended, got) = tokio::join!(
            first_exchange(&client, &upstream, &mut kept, None),
            backend_side
        );
        assert!(matches!(ended, FirstExchange::Relay), "{ended:?}");
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn a_server_that_speaks_first_goes_straight_to_the_relay() {
        let (_client_far, client) = pair().await;
        let (upstream, mut backend) = pair().await;
        backend.write_all(b"220 hello").await.unwrap();
        let mut kept = Kept::default();
        let ended = first_exchange(&client, &upstream, &mut kept, None).await;
        assert!(matches!(ended, FirstExchange::Relay), "{ended:?}");
        assert!(!kept.has_request());
    }

    #[tokio::test]
    async fn past_the_keep_limit_the_connection_is_relayed_without_replay() {
        let (mut client_far, client) = pair().await;
        let (upstream, mut backend) = pair().await;
        let upload = vec![7u8; KEEP_AT_MOST + 10_000];
        let writer = tokio::spawn(async move {
            client_far.write_all(&upload).await.unwrap();
            client_far
        });
        let mut kept = Kept::default();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; KEEP_AT_MOST];
            backend.read_exact(&mut buf).await.unwrap();
            backend
        });
        let ended = first_exchange(&client, &upstream, &mut kept, None).await;
        assert!(matches!(ended, FirstExchange::Relay), "{ended:?}");
        assert_eq!(kept.bytes.len(), KEEP_AT_MOST);
        let _ = (writer.await.unwrap(), reader.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_moving_for_the_idle_timeout_ends_it() {
        let (_client_far, client) = pair().await;
        let (upstream, _backend) = pair().await;
        let mut kept = Kept::default();
        let ended =
            first_exchange(&client, &upstream, &mut kept, Some(Duration::from_secs(5))).await;
        assert!(matches!(ended, FirstExchange::Idle), "{ended:?}");
    }
}
