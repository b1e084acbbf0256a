//! Reading the files a project holds, which may be anyone's: a regular file only (never a
//! device, a FIFO or `/dev/zero`), and at most a size, so a hostile repository cannot make
//! berth read forever or fill the memory.

use std::io::Read;
use std::path::Path;

/// The most of a Compose file, a Dockerfile or a `.env` file berth reads.
pub const MAX_TEXT_FILE: u64 = 4 << 20;

/// Reads a regular file of at most `max` bytes as UTF-8.
pub fn read_text(path: &Path, max: u64) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if metadata.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} MiB", max >> 20),
        ));
    }
    let mut text = String::new();
    file.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} MiB", max >> 20),
        ));
    }
    Ok(text)
}

/// Whether `path` (followed through links) is inside `dir`.
pub fn inside(dir: &Path, path: &Path) -> bool {
    match (dir.canonicalize(), path.canonicalize()) {
        (Ok(dir), Ok(path)) => path.starts_with(dir),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_big_files_are_refused() {
        assert!(read_text(Path::new("/dev/zero"), MAX_TEXT_FILE).is_err());
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 2048]).unwrap();
        assert!(read_text(&big, 1024).is_err());
        assert_eq!(read_text(&big, 4096).unwrap().len(), 2048);
        assert!(inside(dir.path(), &big));
        assert!(!inside(dir.path(), Path::new("/etc/passwd")));
    }
}
