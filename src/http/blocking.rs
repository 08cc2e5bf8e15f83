//! Large files on a file system that may stop answering (NFS, SMB, FUSE, 9p…:
//! [`crate::mountinfo::may_not_answer_type`]), sent by reads on tokio's blocking
//! pool instead of with `sendfile` on the runtime's threads: a read that waits for
//! a dead server holds a blocking thread and one of the site's lookup places
//! ([`super::files::MAX_LOOKUPS`]), never a runtime worker, so the daemon (its
//! listeners, its control socket, other requests) goes on while downloads from
//! such a mount wait.
//!
//! Each read is [`CHUNK`] bytes, copied once through memory. The chunks in flight
//! (read, not yet taken by the client's socket) are at most [`MAX_CHUNKS`] in all
//! the site's connections together: a client that stops reading holds the chunk
//! hyper is writing, and past the limit a read waits for a chunk to go, as long as
//! it waits for a place ([`Reader::wait`]), then ends its download. The file is
//! closed on a thread of its own ([`RemoteFile`]).

use super::Body;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, LazyLock, mpsc};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How much one read takes from the file.
pub const CHUNK: usize = 64 * 1024;

/// The most chunks in memory at once, over every connection of a site (64 MiB, as
/// [`super::files::MAX_BODIES`]).
pub const MAX_CHUNKS: usize = 1024;

/// What reads a file's chunks: the site's places on the blocking pool, its room
/// for chunks, and how long a read waits for either before the download is ended.
#[derive(Clone)]
pub struct Reader {
    /// The places; a read holds one until the file system answers it.
    pub places: Arc<Semaphore>,
    /// [`MAX_CHUNKS`] permits; a chunk holds one from its read until it is sent.
    pub chunks: Arc<Semaphore>,
    /// How long a read waits for a place, and for room.
    pub wait: Duration,
}

/// An open file on a file system that may stop answering. Closing one may wait
/// for its server too (FUSE asks it to flush at each close), so it is closed on a
/// thread of its own ([`close_later`]), never on the runtime's.
pub struct RemoteFile(Option<File>);

impl RemoteFile {
    /// Wraps `file`.
    pub fn new(file: File) -> Self {
        RemoteFile(Some(file))
    }

    fn get(&self) -> &File {
        self.0.as_ref().expect("taken only on drop")
    }
}

impl Drop for RemoteFile {
    fn drop(&mut self) {
        if let Some(file) = self.0.take() {
            close_later(file);
        }
    }
}

/// The thread that closes [`RemoteFile`]s, one after the other: one stuck on a
/// dead server holds only it (the others wait behind, each only an open
/// descriptor). It is never joined: at shutdown it may be waiting for ever.
static CLOSER: LazyLock<Option<mpsc::Sender<File>>> = LazyLock::new(|| {
    let (tx, rx) = mpsc::channel::<File>();
    let thread = std::thread::Builder::new().name("close remote".into());
    thread
        .spawn(move || rx.into_iter().for_each(drop))
        .ok()
        .map(|_| tx)
});

/// Closes `file` on the [`CLOSER`] thread (here if it could not be started).
fn close_later(file: File) {
    if let Some(closer) = CLOSER.as_ref()
        && let Err(mpsc::SendError(file)) = closer.send(file)
    {
        drop(file);
    }
}

/// The body of `count` bytes of `file` from `start`, read [`CHUNK`] at a time on
/// the blocking pool. A file cut short, or a read that finds no place or no room
/// within [`Reader::wait`] (every place is held by reads the file system has not
/// answered), ends the body with an error: the connection is closed, and the
/// client sees fewer bytes than `Content-Length`.
pub fn body(file: RemoteFile, start: u64, count: u64, reader: Reader) -> Body {
    let state = (Arc::new(file), start, count, reader);
    let chunks = futures::stream::unfold(Some(state), |state| async move {
        let (file, offset, left, reader) = state?;
        if left == 0 {
            return None;
        }
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(CHUNK);
        match read(&file, offset, want, &reader).await {
            Ok(bytes) => {
                let n = bytes.len() as u64;
                let next = (file, offset + n, left - n, reader);
                Some((Ok(Frame::data(bytes)), Some(next)))
            }
            Err(e) => Some((Err(e.into()), None)),
        }
    });
    StreamBody::new(chunks).boxed_unsync()
}

/// `want` bytes of `file` at `offset` (fewer where it ends), read on the blocking
/// pool. The chunk's room is held from before the read (a read given up on keeps
/// it until its buffer is gone) until the bytes are dropped.
async fn read(file: &Arc<RemoteFile>, offset: u64, want: usize, reader: &Reader) -> io::Result<Bytes> {
    let late = |what: &str| io::Error::new(io::ErrorKind::TimedOut, format!("no {what} to read the file in"));
    let room = tokio::time::timeout(reader.wait, reader.chunks.clone().acquire_owned())
        .await
        .map_err(|_| late("memory"))?
        .map_err(io::Error::other)?;
    let place = tokio::time::timeout(reader.wait, reader.places.clone().acquire_owned())
        .await
        .map_err(|_| late("place (its file system does not answer)"))?
        .map_err(io::Error::other)?;
    let file = file.clone();
    let task = tokio::task::spawn_blocking(move || {
        let _place: OwnedSemaphorePermit = place;
        let mut buf = vec![0; want];
        let n = file.get().read_at(&mut buf, offset)?;
        buf.truncate(n);
        Ok::<_, io::Error>(Chunk { buf, _room: room })
    });
    let chunk = task.await.map_err(io::Error::other)??;
    if chunk.buf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file shrank while being sent",
        ));
    }
    Ok(Bytes::from_owner(chunk))
}

/// A chunk's bytes and its room among [`MAX_CHUNKS`].
struct Chunk {
    buf: Vec<u8>,
    _room: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(body: Body) -> (Vec<u8>, Option<String>) {
        let mut body = std::pin::pin!(body);
        let mut got = Vec::new();
        while let Some(frame) =
            std::future::poll_fn(|cx| hyper::body::Body::poll_frame(body.as_mut(), cx)).await
        {
            match frame {
                Ok(frame) => got.extend_from_slice(frame.data_ref().expect("data")),
                Err(e) => return (got, Some(e.to_string())),
            }
        }
        (got, None)
    }

    fn file_of(bytes: &[u8]) -> RemoteFile {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        RemoteFile::new(file)
    }

    fn reader(places: usize) -> Reader {
        Reader {
            places: Arc::new(Semaphore::new(places)),
            chunks: Arc::new(Semaphore::new(MAX_CHUNKS)),
            wait: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn a_range_comes_whole_and_its_chunks_are_given_back() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let reader = reader(1);
        let (got, error) = collect(body(file_of(&bytes), 1000, 200_000, reader.clone())).await;
        assert_eq!(error, None);
        assert!(got == bytes[1000..201_000], "the bytes of the range, in order");
        assert_eq!(reader.chunks.available_permits(), MAX_CHUNKS, "no chunk kept");
        assert_eq!(reader.places.available_permits(), 1, "no place kept");
    }

    #[tokio::test]
    async fn a_file_cut_short_or_no_place_to_read_ends_the_body_with_an_error() {
        let (got, error) = collect(body(file_of(&[1; 100]), 0, 200, reader(1))).await;
        assert_eq!(got.len(), 100);
        assert!(error.is_some_and(|e| e.contains("shrank")));
        let (got, error) = collect(body(file_of(&[1; 100]), 0, 100, reader(0))).await;
        assert!(got.is_empty());
        assert!(
            error.is_some_and(|e| e.contains("no place")),
            "every place held: given up after the wait"
        );
    }
}
