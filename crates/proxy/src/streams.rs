//! Downstream HTTP/2 streams run inside their connection's task.
//!
//! hyper hands every HTTP/2 stream to an executor, and tokio's executor
//! makes each one a task: an allocation, a trip through the scheduler for
//! every wake-up, and a hand-off to the connection's task for every frame.
//! [`Local`] is an executor that keeps a connection's streams in a
//! `FuturesUnordered` which [`WithStreams`] polls together with the
//! connection: the streams first, then the connection, which then writes
//! what they answered in the same poll. It is HAProxy's shape, where a
//! connection and its streams are served by one loop.
//!
//! Written by hand: hyper offers the hook (`rt::Executor`) but no executor
//! of this kind, and tokio's `LocalSet` still makes a task per stream.

use futures::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor hyper hands a connection's new streams to.
#[derive(Clone, Default)]
pub struct Local(Arc<Inbox>);

#[derive(Default)]
struct Inbox {
    new: Mutex<Vec<Stream>>,
    /// `new` is not empty: looked at before taking the lock.
    waiting: AtomicBool,
}

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for Local {
    fn execute(&self, fut: F) {
        self.0
            .new
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::pin(fut));
        self.0.waiting.store(true, Ordering::Release);
    }
}

/// A connection future and the streams it started, polled as one; it ends
/// when the connection and all its streams have.
pub struct WithStreams<C> {
    conn: Pin<Box<C>>,
    done: bool,
    inbox: Arc<Inbox>,
    running: FuturesUnordered<Stream>,
}

impl<C: Future> WithStreams<C> {
    pub fn new(conn: C, exec: &Local) -> Self {
        WithStreams {
            conn: Box::pin(conn),
            done: false,
            inbox: exec.0.clone(),
            running: FuturesUnordered::new(),
        }
    }

    /// The connection itself (for a graceful shut-down).
    pub fn conn(&mut self) -> Pin<&mut C> {
        self.conn.as_mut()
    }
}

impl<C: Future> Future for WithStreams<C> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            if this.inbox.waiting.swap(false, Ordering::Acquire) {
                let new =
                    std::mem::take(&mut *this.inbox.new.lock().unwrap_or_else(|e| e.into_inner()));
                this.running.extend(new);
            }
            // The streams first: the connection's poll below then writes
            // what they answered.
            while let Poll::Ready(Some(())) = this.running.poll_next_unpin(cx) {}
            if !this.done && this.conn.as_mut().poll(cx).is_ready() {
                this.done = true;
            }
            // Streams the connection just accepted start at once.
            if this.inbox.waiting.load(Ordering::Acquire) {
                continue;
            }
            return if this.done && this.running.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;

    #[tokio::test]
    async fn streams_run_in_the_connection_task_and_outlive_it() {
        let exec = Local::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u32>();
        // The "connection" starts a stream that waits for a value, then
        // ends at once.
        let conn = {
            let exec = exec.clone();
            async move {
                exec.execute(async move {
                    let v = rx.await.unwrap_or(0);
                    let _ = done_tx.send(v + 1);
                });
            }
        };
        let both = tokio::spawn(WithStreams::new(conn, &exec));
        tokio::task::yield_now().await;
        assert!(!both.is_finished(), "ended while a stream was running");
        tx.send(41).unwrap();
        assert_eq!(done_rx.await.unwrap(), 42);
        both.await.unwrap();
    }
}
