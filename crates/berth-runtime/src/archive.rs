//! What a `docker save` archive would name when loaded, read before Docker sees it.
//!
//! `docker load` tags every name an archive carries, over whatever image had it. A caller who
//! may only deploy one app must not be able to retag another app's image or a base image, so
//! the agent reads the names first: from `manifest.json` (`RepoTags`), the legacy
//! `repositories` file, and an OCI `index.json`'s name annotations, wherever in the archive
//! those files appear and however often. An archive berth cannot read completely (compressed,
//! with paths that climb out, with metadata it cannot parse) is refused rather than guessed at.

use std::io::Read;
use std::path::{Component, Path};

/// Metadata files are small; a larger one is not an honest archive.
const METADATA_LIMIT: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read the image archive: {0}")]
    Read(String),
    #[error(
        "the image archive is not an uncompressed tar file; send the output of `docker save` as it is"
    )]
    NotTar,
    #[error("the image archive holds the path `{0}`, which `docker save` never writes")]
    UnsafePath(String),
    #[error("the image archive's {file} cannot be read: {message}")]
    Metadata { file: String, message: String },
}

/// Every image name loading `archive` could create or move.
pub fn image_names(archive: &Path) -> Result<Vec<String>, ArchiveError> {
    let file = std::fs::File::open(archive).map_err(|e| ArchiveError::Read(e.to_string()))?;
    names_in(file)
}

fn names_in(reader: impl Read) -> Result<Vec<String>, ArchiveError> {
    let mut tar = tar::Archive::new(reader);
    let mut names = Vec::new();
    let mut saw_entry = false;
    let entries = tar.entries().map_err(|_| ArchiveError::NotTar)?;
    for entry in entries {
        let entry = entry.map_err(|_| ArchiveError::NotTar)?;
        saw_entry = true;
        let path = entry
            .path()
            .map_err(|e| ArchiveError::Read(e.to_string()))?
            .into_owned();
        let shown = path.display().to_string();
        let mut parts = Vec::new();
        for component in path.components() {
            match component {
                Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
                Component::CurDir => {}
                _ => return Err(ArchiveError::UnsafePath(shown)),
            }
        }
        if parts.len() != 1 {
            continue;
        }
        let file = parts.remove(0);
        if !matches!(
            file.as_str(),
            "manifest.json" | "repositories" | "index.json"
        ) {
            continue;
        }
        let mut text = Vec::new();
        entry
            .take(METADATA_LIMIT + 1)
            .read_to_end(&mut text)
            .map_err(|e| ArchiveError::Read(e.to_string()))?;
        if text.len() as u64 > METADATA_LIMIT {
            return Err(ArchiveError::Metadata {
                file,
                message: "it is larger than 16 MiB".to_owned(),
            });
        }
        let json: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| ArchiveError::Metadata {
                file: file.clone(),
                message: e.to_string(),
            })?;
        let malformed = |what: &str| ArchiveError::Metadata {
            file: file.clone(),
            message: what.to_owned(),
        };
        match file.as_str() {
            "manifest.json" => {
                let images = json.as_array().ok_or_else(|| malformed("not a list"))?;
                for image in images {
                    let Some(tags) = image.get("RepoTags") else {
                        continue;
                    };
                    if tags.is_null() {
                        continue;
                    }
                    for tag in tags.as_array().ok_or_else(|| malformed("RepoTags"))? {
                        names.push(
                            tag.as_str()
                                .ok_or_else(|| malformed("RepoTags"))?
                                .to_owned(),
                        );
                    }
                }
            }
            "repositories" => {
                let repositories = json.as_object().ok_or_else(|| malformed("not a map"))?;
                for (repository, tags) in repositories {
                    let tags = tags.as_object().ok_or_else(|| malformed("tags"))?;
                    for tag in tags.keys() {
                        names.push(format!("{repository}:{tag}"));
                    }
                }
            }
            _ => {
                let manifests = match json.get("manifests") {
                    None => continue,
                    Some(list) => list.as_array().ok_or_else(|| malformed("manifests"))?,
                };
                for manifest in manifests {
                    let Some(annotations) = manifest.get("annotations") else {
                        continue;
                    };
                    let annotations = annotations
                        .as_object()
                        .ok_or_else(|| malformed("annotations"))?;
                    let full = annotations
                        .get("io.containerd.image.name")
                        .map(|v| v.as_str().ok_or_else(|| malformed("image name")))
                        .transpose()?;
                    if let Some(full) = full {
                        names.push(full.to_owned());
                    }
                    if let Some(reference) = annotations.get("org.opencontainers.image.ref.name") {
                        let reference = reference.as_str().ok_or_else(|| malformed("ref.name"))?;
                        // Docker writes the bare tag of the full name beside it; anything
                        // else is a name of its own and is checked as one.
                        let is_tag_of_full = full
                            .and_then(|f| f.rsplit_once(':'))
                            .is_some_and(|(_, tag)| tag == reference);
                        if !is_tag_of_full {
                            names.push(reference.to_owned());
                        }
                    }
                }
            }
        }
    }
    if !saw_entry {
        return Err(ArchiveError::NotTar);
    }
    names.sort();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(files: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, text) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, path, text.as_bytes())
                .unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn reads_every_place_a_name_can_hide() {
        let bytes = archive(&[
            ("blobs/sha256/aa", "layer"),
            (
                "manifest.json",
                r#"[{"Config":"x.json","RepoTags":["berth/a/web:local-1"],"Layers":[]},{"RepoTags":null}]"#,
            ),
            ("repositories", r#"{"postgres":{"16":"abc"}}"#),
            (
                "./index.json",
                r#"{"manifests":[{"annotations":{"io.containerd.image.name":"docker.io/berth/a/web:local-1","org.opencontainers.image.ref.name":"local-1"}},{"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}"#,
            ),
            ("manifest.json", r#"[{"RepoTags":["redis:7"]}]"#),
        ]);
        let names = names_in(bytes.as_slice()).unwrap();
        assert_eq!(
            names,
            [
                "berth/a/web:local-1",
                "docker.io/berth/a/web:local-1",
                "latest",
                "postgres:16",
                "redis:7"
            ]
        );
    }

    #[test]
    fn refuses_what_it_cannot_read_fully() {
        assert!(matches!(
            names_in(&b"\x1f\x8b\x08\x00 compressed"[..]),
            Err(ArchiveError::NotTar)
        ));
        assert!(matches!(names_in(&b""[..]), Err(ArchiveError::NotTar)));
        let mut climbing = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        // `append_data` refuses `..`; a hostile archive is written byte by byte.
        header.as_gnu_mut().unwrap().name[..18].copy_from_slice(b"../manifest.json\0\0");
        header.set_cksum();
        climbing.append(&header, &b"[]"[..]).unwrap();
        let bytes = climbing.into_inner().unwrap();
        assert!(matches!(
            names_in(bytes.as_slice()),
            Err(ArchiveError::UnsafePath(_))
        ));
        let broken = archive(&[("manifest.json", "{not json")]);
        assert!(matches!(
            names_in(broken.as_slice()),
            Err(ArchiveError::Metadata { .. })
        ));
    }
}
