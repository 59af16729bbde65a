//! A read-ahead thread for snapshot files: it reads the file in large
//! sequential blocks while the caller verifies and consumes the previous
//! ones, so disk reads and checksumming overlap instead of alternating.

use std::fs::File;
use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Bytes per block read by the thread.
pub const PREFETCH_BLOCK_BYTES: usize = 1 << 20;
/// Blocks in flight (memory: this many blocks).
pub const PREFETCH_BLOCKS: usize = 3;

/// An `io::Read` over a file whose blocks are read by a background thread
/// (memory: about `PREFETCH_BLOCKS + 1` blocks of `PREFETCH_BLOCK_BYTES`).
pub struct PrefetchReader {
    filled: Option<Receiver<io::Result<Vec<u8>>>>,
    recycle: Option<SyncSender<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    eof: bool,
    thread: Option<JoinHandle<()>>,
}

impl PrefetchReader {
    /// Starts reading `file` from its current position.
    pub fn new(mut file: File) -> io::Result<Self> {
        let (filled_tx, filled_rx) = sync_channel::<io::Result<Vec<u8>>>(PREFETCH_BLOCKS);
        let (recycle_tx, recycle_rx) = sync_channel::<Vec<u8>>(PREFETCH_BLOCKS);
        for _ in 0..PREFETCH_BLOCKS {
            // Cannot fail: the channel has room for every block.
            let _ = recycle_tx.send(Vec::with_capacity(PREFETCH_BLOCK_BYTES));
        }
        let thread = std::thread::Builder::new()
            .name("snapshot-prefetch".into())
            .spawn(move || {
                // Ends at EOF, on an error, or when the reader is dropped
                // (either channel closes).
                while let Ok(mut block) = recycle_rx.recv() {
                    block.clear();
                    let result = (&mut file)
                        .take(PREFETCH_BLOCK_BYTES as u64)
                        .read_to_end(&mut block)
                        .map(|_| block);
                    let stop = !matches!(&result, Ok(b) if !b.is_empty());
                    if filled_tx.send(result).is_err() || stop {
                        return;
                    }
                }
            })?;
        Ok(PrefetchReader {
            filled: Some(filled_rx),
            recycle: Some(recycle_tx),
            current: Vec::new(),
            pos: 0,
            eof: false,
            thread: Some(thread),
        })
    }
}

impl Read for PrefetchReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.eof || out.is_empty() {
                return Ok(0);
            }
            let Some(filled) = self.filled.as_ref() else {
                return Ok(0);
            };
            let next = match filled.recv() {
                Ok(result) => result?,
                Err(_) => {
                    return Err(io::Error::other(
                        "snapshot prefetch thread ended unexpectedly",
                    ))
                }
            };
            let done = std::mem::replace(&mut self.current, next);
            if let Some(recycle) = self.recycle.as_ref().filter(|_| done.capacity() > 0) {
                // The thread may already have finished (EOF): then the
                // block is simply dropped.
                let _ = recycle.try_send(done);
            }
            self.pos = 0;
            if self.current.is_empty() {
                self.eof = true;
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for PrefetchReader {
    fn drop(&mut self) {
        // Closing both channels wakes the thread wherever it waits.
        self.filled.take();
        self.recycle.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
