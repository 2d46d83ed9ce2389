//! An in-process TCP relay for network faults.
//!
//! A [`Relay`] listens on a free loopback port and forwards each connection
//! to a target (a shared or private server). Point the client under test at
//! [`Relay::addr`] instead of the server, then switch the relay's mode while
//! the test runs:
//!
//! | mode | existing connections | new connections |
//! | --- | --- | --- |
//! | [`Relay::pass`] (start) | bytes flow | forwarded |
//! | [`Relay::blackhole`] | stay open, no byte moves either way, no FIN, no RST | accepted (the kernel completes the handshake), but the target is not reached and no byte moves |
//! | [`Relay::refuse`] | reset (RST) | refused (the port stops listening) |
//! | [`Relay::cut`] (once) | reset (RST) | forwarded as before |
//!
//! A black hole is a partition that heals: bytes sent into it are held
//! (unread, in the kernel's buffers, so TCP flow control applies) and
//! delivered, in order, after [`Relay::pass`]. A client therefore sees
//! reads and connects that never complete — its own deadline must end them.
//! Each switch returns once the mode is in force: bytes a client writes
//! after [`Relay::blackhole`] returns are not forwarded; connections are
//! refused as soon as [`Relay::refuse`] returns.
//!
//! ```no_run
//! # async fn demo(server: std::net::SocketAddr) -> std::io::Result<()> {
//! use selfrag_testkit::relay::Relay;
//! let relay = Relay::start(server).await?;
//! let url = format!("redis://{}", relay.addr());
//! // ... connect a client to `url` ...
//! relay.blackhole().await; // the client's next call must time out
//! relay.pass().await; // and recover
//! # Ok(()) }
//! ```
//!
//! The relay runs on the Tokio runtime that started it; dropping it closes
//! its port and every connection.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// What a [`Relay`] does with connections (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    /// Forward bytes both ways.
    Pass,
    /// Hold every byte, keep every connection open.
    Blackhole,
    /// Refuse new connections; existing ones were reset.
    Refuse,
}

/// Counters of a [`Relay`], since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Connections accepted from clients.
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Bytes forwarded from clients to the target.
    pub bytes_to_target: u64,
    /// Bytes forwarded from the target to clients.
    pub bytes_to_client: u64,
    /// Connections to the target that failed (the client was then reset).
    pub upstream_failures: u64,
}

/// An in-process TCP relay whose forwarding can be switched off in several
/// ways at runtime (see the module docs).
pub struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    counters: Arc<Counters>,
    ctl: watch::Receiver<Ctl>,
    commands: mpsc::UnboundedSender<(Command, oneshot::Sender<Result<(), String>>)>,
    manager: JoinHandle<()>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("mode", &self.mode())
            .field("stats", &self.stats())
            .finish()
    }
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    to_target: AtomicU64,
    to_client: AtomicU64,
    upstream_failures: AtomicU64,
}

/// What every connection task watches: the mode, and the generation that
/// [`Relay::cut`] bumps to end the connections made before it.
#[derive(Debug, Clone, Copy)]
struct Ctl {
    mode: RelayMode,
    generation: u64,
}

#[derive(Debug, Clone, Copy)]
enum Command {
    Mode(RelayMode),
    Cut,
}

/// How one direction, or a whole connection, ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The source sent FIN (passed on as FIN).
    Eof,
    /// An I/O error (a peer reset): reset the other side too.
    Error,
    /// Cut, refused, or the relay dropped: reset both sides.
    Reset,
}

impl Relay {
    /// Starts a relay to `target` on a free port of 127.0.0.1, in
    /// [`RelayMode::Pass`].
    ///
    /// # Errors
    /// When no loopback port can be bound.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub async fn start(target: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let (ctl_tx, ctl) = watch::channel(Ctl { mode: RelayMode::Pass, generation: 0 });
        let (commands, rx) = mpsc::unbounded_channel();
        let manager = tokio::spawn(manage(listener, addr, target, ctl_tx, rx, counters.clone()));
        Ok(Self { addr, target, counters, ctl, commands, manager })
    }

    /// Where clients connect (127.0.0.1 and the relay's port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relay's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Where the relay forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The current mode.
    pub fn mode(&self) -> RelayMode {
        self.ctl.borrow().mode
    }

    /// The counters.
    pub fn stats(&self) -> RelayStats {
        let c = &self.counters;
        RelayStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            open: c.open.load(Ordering::Relaxed),
            bytes_to_target: c.to_target.load(Ordering::Relaxed),
            bytes_to_client: c.to_client.load(Ordering::Relaxed),
            upstream_failures: c.upstream_failures.load(Ordering::Relaxed),
        }
    }

    /// Forwards again (after a black hole, held bytes flow; after a
    /// refusal, the port listens again).
    ///
    /// # Panics
    /// When the port cannot be bound again within 5 s after
    /// [`Relay::refuse`] (another process took it).
    pub async fn pass(&self) {
        self.command(Command::Mode(RelayMode::Pass)).await;
    }

    /// Stops every byte both ways on every connection, old and new, without
    /// closing any (a network partition).
    ///
    /// # Panics
    /// As [`Relay::pass`], after [`Relay::refuse`].
    pub async fn blackhole(&self) {
        self.command(Command::Mode(RelayMode::Blackhole)).await;
    }

    /// Resets every open connection and stops listening, so that connects
    /// are refused (a server that is down), until [`Relay::pass`].
    pub async fn refuse(&self) {
        self.command(Command::Mode(RelayMode::Refuse)).await;
    }

    /// Resets every open connection once (a middlebox dropping its flows);
    /// new connections are handled as before.
    pub async fn cut(&self) {
        self.command(Command::Cut).await;
    }

    async fn command(&self, command: Command) {
        let (ack, done) = oneshot::channel();
        if self.commands.send((command, ack)).is_err() {
            panic!("relay {} is gone (its runtime ended?)", self.addr);
        }
        match done.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("relay {}: {e}", self.addr),
            Err(_) => panic!("relay {} is gone (its runtime ended?)", self.addr),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Dropping the manager drops the listener and the watch sender,
        // which ends every connection task.
        self.manager.abort();
    }
}

async fn manage(
    listener: TcpListener,
    addr: SocketAddr,
    target: SocketAddr,
    ctl: watch::Sender<Ctl>,
    mut commands: mpsc::UnboundedReceiver<(Command, oneshot::Sender<Result<(), String>>)>,
    counters: Arc<Counters>,
) {
    let mut listener = Some(listener);
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    loop {
        connections.retain(|c| !c.is_finished());
        tokio::select! {
            command = commands.recv() => {
                let Some((command, ack)) = command else { break };
                let result = match command {
                    Command::Mode(mode) => {
                        ctl.send_modify(|c| c.mode = mode);
                        if mode == RelayMode::Refuse {
                            // Closing the listener makes connects fail with
                            // "connection refused"; the tasks see the mode
                            // and reset their connections.
                            listener = None;
                            for c in connections.drain(..) {
                                let _ = c.await;
                            }
                            Ok(())
                        } else if listener.is_none() {
                            rebind(addr).await.map(|l| listener = Some(l))
                        } else {
                            Ok(())
                        }
                    }
                    Command::Cut => {
                        ctl.send_modify(|c| c.generation += 1);
                        for c in connections.drain(..) {
                            let _ = c.await;
                        }
                        Ok(())
                    }
                };
                let _ = ack.send(result);
            }
            accepted = accept(listener.as_ref()) => match accepted {
                Ok(client) => {
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    connections.push(tokio::spawn(connection(client, target, ctl.subscribe(), counters.clone())));
                }
                // E.g. out of file descriptors: try again shortly rather
                // than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

async fn accept(listener: Option<&TcpListener>) -> io::Result<TcpStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

async fn rebind(addr: SocketAddr) -> Result<TcpListener, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() > deadline => return Err(format!("cannot listen on {addr} again: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Decrements the open-connection counter however the task ends.
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(mut client: TcpStream, target: SocketAddr, mut ctl: watch::Receiver<Ctl>, counters: Arc<Counters>) {
    counters.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(counters.clone());
    let generation = ctl.borrow().generation;
    // In a partition the SYN would not reach the server: connect to the
    // target only once bytes may flow.
    if wait_pass(&mut ctl, generation).await.is_err() {
        let _ = client.set_zero_linger();
        return;
    }
    let upstream = tokio::select! {
        r = TcpStream::connect(target) => r,
        _ = ended(&mut ctl, generation) => {
            let _ = client.set_zero_linger();
            return;
        }
    };
    let mut upstream = match upstream {
        Ok(s) => s,
        Err(_) => {
            // What the client would see from a server that is down.
            counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let end = {
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let up = pump(&mut client_read, &mut upstream_write, ctl.clone(), generation, &counters.to_target);
        let down = pump(&mut upstream_read, &mut client_write, ctl.clone(), generation, &counters.to_client);
        both(up, down).await
    };
    if end != End::Eof {
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
}

/// Runs both directions until both reached EOF, or one ended otherwise.
async fn both(up: impl std::future::Future<Output = End>, down: impl std::future::Future<Output = End>) -> End {
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            e = &mut up, if !up_done => if e == End::Eof { up_done = true } else { return e },
            e = &mut down, if !down_done => if e == End::Eof { down_done = true } else { return e },
        }
    }
    End::Eof
}

/// Waits until bytes may flow; `Err` when the connection must end.
async fn wait_pass(ctl: &mut watch::Receiver<Ctl>, generation: u64) -> Result<(), End> {
    loop {
        let now = *ctl.borrow_and_update();
        if now.generation != generation || now.mode == RelayMode::Refuse {
            return Err(End::Reset);
        }
        if now.mode == RelayMode::Pass {
            return Ok(());
        }
        if ctl.changed().await.is_err() {
            return Err(End::Reset);
        }
    }
}

/// Completes when the connection must end (cut, refused, relay dropped).
async fn ended(ctl: &mut watch::Receiver<Ctl>, generation: u64) {
    loop {
        let now = *ctl.borrow_and_update();
        if now.generation != generation || now.mode == RelayMode::Refuse || ctl.changed().await.is_err() {
            return;
        }
    }
}

/// Forwards one direction. The mode is checked after every read and
/// before every write, so nothing read after a switch to the black hole is
/// written until the next pass.
async fn pump(
    src: &mut ReadHalf<'_>,
    dst: &mut WriteHalf<'_>,
    mut ctl: watch::Receiver<Ctl>,
    generation: u64,
    counter: &AtomicU64,
) -> End {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Err(end) = wait_pass(&mut ctl, generation).await {
            return end;
        }
        // While blocked in the read, a mode change must be noticed (a cut
        // or refusal ends the connection at once).
        let n = tokio::select! {
            biased;
            changed = ctl.changed() => {
                if changed.is_err() {
                    return End::Reset;
                }
                continue;
            }
            r = src.read(&mut buf) => match r {
                Ok(0) => {
                    let _ = dst.shutdown().await;
                    return End::Eof;
                }
                Ok(n) => n,
                Err(_) => return End::Error,
            },
        };
        let mut written = 0;
        while written < n {
            if let Err(end) = wait_pass(&mut ctl, generation).await {
                return end;
            }
            tokio::select! {
                biased;
                changed = ctl.changed() => {
                    if changed.is_err() {
                        return End::Reset;
                    }
                }
                r = dst.write(&buf[written..n]) => match r {
                    Ok(0) | Err(_) => return End::Error,
                    Ok(k) => {
                        written += k;
                        counter.fetch_add(k as u64, Ordering::Relaxed);
                    }
                },
            }
        }
    }
}
