//! The byte pipeline: plaintext → zstd → age → SHA-256 → destinations, and back.
//!
//! Everything streams in chunks of at most [`CHUNK`] bytes through bounded channels, so
//! memory stays flat whatever the backup's size. The sync halves (compression, encryption)
//! run on blocking threads; [`ChannelReader`] and [`FanOutWriter`] bridge them to the async
//! sources and destinations.

use crate::error::{BackupError, Result};
use crate::keys::{Identities, Recipient};
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::io::{self, BufReader, Read, Write};
use tokio::sync::mpsc;

/// The unit of transfer between stages.
pub const CHUNK: usize = 128 << 10;
/// Bytes a zstd worker compresses at a time.
const JOB_SIZE: u32 = 2 << 20;
/// Chunks buffered between two stages.
pub const CHANNEL_DEPTH: usize = 16;

#[derive(Debug, Clone, Copy)]
pub struct Compression {
    pub level: i32,
    /// zstd worker threads (0: compress on the calling thread).
    pub workers: u32,
}

impl Default for Compression {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        Compression {
            level: 3,
            workers: cores.min(4),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Plaintext bytes read.
    pub content_size: u64,
    /// Stored bytes written.
    pub size: u64,
    /// SHA-256 of the stored bytes, hex.
    pub sha256: String,
}

/// Compresses and encrypts everything `input` yields into `output`.
pub fn encode(
    input: &mut dyn Read,
    output: &mut dyn Write,
    recipients: &[Recipient],
    compression: Compression,
    progress: &(dyn Fn(u64) + Sync),
) -> io::Result<Encoded> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r.age() as &dyn age::Recipient))
            .map_err(|e| io::Error::other(format!("cannot encrypt: {e}")))?;
    let hashing = HashingWriter {
        inner: output,
        hasher: Sha256::new(),
        size: 0,
    };
    let encrypted = encryptor.wrap_output(hashing)?;
    let mut compressor = zstd::stream::write::Encoder::new(encrypted, compression.level)?;
    if compression.workers > 0 {
        compressor.multithread(compression.workers)?;
        // Smaller jobs than zstd's default (4 windows, 8 MiB at level 3): its buffer pool
        // holds about 2 × workers + 3 jobs, and memory must stay small whatever the backup.
        compressor.set_parameter(zstd::stream::raw::CParameter::JobSize(JOB_SIZE))?;
    }
    compressor.include_checksum(true)?;
    let mut buffer = vec![0u8; CHUNK];
    let mut content_size = 0u64;
    loop {
        let n = match input.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        compressor.write_all(&buffer[..n])?;
        content_size += n as u64;
        progress(content_size);
    }
    let encrypted = compressor.finish()?;
    let hashing = encrypted.finish()?;
    hashing.inner.flush()?;
    Ok(Encoded {
        content_size,
        size: hashing.size,
        sha256: hex::encode(hashing.hasher.finalize()),
    })
}

/// What reading a stored backup found.
pub struct Decoded {
    /// Stored bytes read (all of them, even after a failure).
    pub size: u64,
    /// SHA-256 of the stored bytes, hex.
    pub sha256: String,
    /// The plaintext size, or why decoding failed.
    pub content: Result<u64>,
}

/// Decrypts and decompresses a stored backup from `input` into `output`, hashing every
/// stored byte. `id` and `recipients` name the backup in errors.
pub fn decode(
    input: &mut dyn Read,
    identities: &Identities,
    output: &mut dyn Write,
    id: &str,
    recipients: &[String],
) -> Decoded {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let content = {
        let hashing = HashingReader {
            inner: &mut *input,
            hasher: &mut hasher,
            size: &mut size,
        };
        decode_inner(
            BufReader::with_capacity(CHUNK, hashing),
            identities,
            output,
            id,
            recipients,
        )
    };
    // Hash whatever follows the point where decoding stopped, so the checksum covers the
    // whole object even when the content is damaged.
    let mut rest = HashingReader {
        inner: input,
        hasher: &mut hasher,
        size: &mut size,
    };
    let drained = io::copy(&mut rest, &mut io::sink());
    let content = match (content, drained) {
        (Ok(_), Err(e)) => Err(BackupError::Damaged {
            id: id.to_owned(),
            detail: format!("reading it failed: {e}"),
        }),
        (content, _) => content,
    };
    Decoded {
        size,
        sha256: hex::encode(hasher.finalize()),
        content,
    }
}

fn decode_inner<R: io::BufRead>(
    input: R,
    identities: &Identities,
    output: &mut dyn Write,
    id: &str,
    recipients: &[String],
) -> Result<u64> {
    let damaged = |detail: String| BackupError::Damaged {
        id: id.to_owned(),
        detail,
    };
    let decryptor = age::Decryptor::new_buffered(input)
        .map_err(|e| damaged(format!("it is not a readable age file ({e})")))?;
    let decrypted = decryptor
        .decrypt(identities.as_age())
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => BackupError::NoKey {
                id: id.to_owned(),
                detail: format!(
                    "none of the given identities matches; it is encrypted to {}: give the \
                     identity of one of them (--identity FILE, to berth restore or berth \
                     backup verify)",
                    if recipients.is_empty() {
                        "unknown recipients".to_owned()
                    } else {
                        recipients.join(", ")
                    }
                ),
            },
            other => damaged(format!("its age header is damaged ({other})")),
        })?;
    let mut decompressor = zstd::stream::read::Decoder::new(decrypted)
        .map_err(|e| damaged(format!("cannot start decompression: {e}")))?;
    let mut buffer = vec![0u8; CHUNK];
    let mut content_size = 0u64;
    loop {
        let n = match decompressor.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(damaged(format!(
                    "decryption or decompression failed after {content_size} bytes ({e})"
                )));
            }
        };
        output
            .write_all(&buffer[..n])
            .map_err(|e| BackupError::io("cannot write the restored data", e))?;
        content_size += n as u64;
    }
    output
        .flush()
        .map_err(|e| BackupError::io("cannot write the restored data", e))?;
    Ok(content_size)
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct HashingReader<'a, R: ?Sized> {
    inner: &'a mut R,
    hasher: &'a mut Sha256,
    size: &'a mut u64,
}

impl<R: Read + ?Sized> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        *self.size += n as u64;
        Ok(n)
    }
}

/// A blocking `Read` over chunks arriving on a channel. An `Err` item fails the read; the
/// channel closing is the end of the stream.
pub struct ChannelReader {
    receiver: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    pub fn new(receiver: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        ChannelReader {
            receiver,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A blocking `Write` that cuts its input into chunks and sends each to every channel. A
/// channel whose receiver has gone (its destination failed) is dropped; writing fails only
/// when none is left.
pub struct FanOutWriter {
    senders: Vec<mpsc::Sender<Bytes>>,
    buffer: BytesMut,
}

impl FanOutWriter {
    pub fn new(senders: Vec<mpsc::Sender<Bytes>>) -> Self {
        FanOutWriter {
            senders,
            buffer: BytesMut::with_capacity(CHUNK),
        }
    }

    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = self.buffer.split().freeze();
        self.buffer.reserve(CHUNK);
        self.senders
            .retain(|sender| sender.blocking_send(chunk.clone()).is_ok());
        if self.senders.is_empty() {
            return Err(io::Error::other("every destination failed"));
        }
        Ok(())
    }
}

impl Write for FanOutWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buffer.len();
        let n = buf.len().min(room);
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() >= CHUNK {
            self.send_buffer()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

/// A blocking `Write` that sends its input, in chunks, to one channel of `io::Result` items
/// (what sync sources write into).
pub struct ChannelWriter {
    sender: mpsc::Sender<io::Result<Bytes>>,
    buffer: BytesMut,
}

impl ChannelWriter {
    pub fn new(sender: mpsc::Sender<io::Result<Bytes>>) -> Self {
        ChannelWriter {
            sender,
            buffer: BytesMut::with_capacity(CHUNK),
        }
    }

    /// Sends an error down the channel so the reader fails instead of seeing a clean end.
    pub fn fail(self, error: io::Error) {
        let _ = self.sender.blocking_send(Err(error));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buffer.len();
        let n = buf.len().min(room);
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() >= CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = self.buffer.split().freeze();
        self.buffer.reserve(CHUNK);
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the backup was abandoned"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Identities {
        let key = age::x25519::Identity::generate();
        Identities::parse(age::secrecy::ExposeSecret::expose_secret(&key.to_string())).unwrap()
    }

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivially: a repeating text with a counter.
        let mut data = Vec::with_capacity(len);
        let mut i = 0u64;
        while data.len() < len {
            data.extend_from_slice(format!("row {i} of the sample table\n").as_bytes());
            i += 1;
        }
        data.truncate(len);
        data
    }

    fn round_trip(data: &[u8], compression: Compression) {
        let keys = key();
        let mut stored = Vec::new();
        let encoded = encode(
            &mut &data[..],
            &mut stored,
            &keys.recipients(),
            compression,
            &|_| {},
        )
        .unwrap();
        assert_eq!(encoded.content_size, data.len() as u64);
        assert_eq!(encoded.size, stored.len() as u64);
        assert_eq!(encoded.sha256, hex::encode(Sha256::digest(&stored)));
        let mut plain = Vec::new();
        let decoded = decode(&mut &stored[..], &keys, &mut plain, "x", &[]);
        assert_eq!(decoded.content.unwrap(), data.len() as u64);
        assert_eq!(decoded.sha256, encoded.sha256);
        assert_eq!(plain, data);
    }

    #[test]
    fn data_survives_the_round_trip() {
        round_trip(b"", Compression::default());
        round_trip(&sample(100), Compression::default());
        round_trip(
            &sample(3 * CHUNK + 17),
            Compression {
                level: 3,
                workers: 2,
            },
        );
        round_trip(
            &sample(CHUNK + 1),
            Compression {
                level: 1,
                workers: 0,
            },
        );
    }

    #[test]
    fn a_flipped_byte_changes_the_checksum_and_fails_decoding() {
        let keys = key();
        let data = sample(200_000);
        let mut stored = Vec::new();
        let encoded = encode(
            &mut &data[..],
            &mut stored,
            &keys.recipients(),
            Compression::default(),
            &|_| {},
        )
        .unwrap();
        let middle = stored.len() / 2;
        stored[middle] ^= 0x01;
        let decoded = decode(&mut &stored[..], &keys, &mut io::sink(), "b1", &[]);
        assert_ne!(decoded.sha256, encoded.sha256);
        assert_eq!(decoded.size, encoded.size);
        let error = decoded.content.unwrap_err();
        assert!(matches!(error, BackupError::Damaged { .. }), "{error}");
    }

    #[test]
    fn the_wrong_identity_is_named_as_the_cause() {
        let keys = key();
        let mut stored = Vec::new();
        encode(
            &mut &b"secret rows"[..],
            &mut stored,
            &keys.recipients(),
            Compression::default(),
            &|_| {},
        )
        .unwrap();
        let recipients = vec![keys.recipients()[0].as_str().to_owned()];
        let decoded = decode(&mut &stored[..], &key(), &mut io::sink(), "b2", &recipients);
        let error = decoded.content.unwrap_err().to_string();
        assert!(error.contains("none of the given identities"), "{error}");
        assert!(error.contains(&recipients[0]), "{error}");
        assert!(error.contains("--identity"), "{error}");
    }

    #[test]
    fn a_truncated_backup_is_damaged() {
        let keys = key();
        let data = sample(300_000);
        let mut stored = Vec::new();
        encode(
            &mut &data[..],
            &mut stored,
            &keys.recipients(),
            Compression::default(),
            &|_| {},
        )
        .unwrap();
        stored.truncate(stored.len() - 100);
        let decoded = decode(&mut &stored[..], &keys, &mut io::sink(), "b3", &[]);
        assert!(matches!(decoded.content, Err(BackupError::Damaged { .. })));
    }

    #[test]
    fn the_standard_age_format_is_written() {
        let keys = key();
        let mut stored = Vec::new();
        encode(
            &mut &b"x"[..],
            &mut stored,
            &keys.recipients(),
            Compression::default(),
            &|_| {},
        )
        .unwrap();
        assert!(stored.starts_with(b"age-encryption.org/v1\n"));
    }
}
