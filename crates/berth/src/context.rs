//! Packs a build context into a tar archive the way `docker build` would send it: every file
//! under the context directory except those `.dockerignore` excludes (the Dockerfile and the
//! `.dockerignore` itself always go).

use globset::GlobMatcher;
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("the build context {0} does not exist or is not a directory")]
    Missing(PathBuf),
    #[error("the Dockerfile {dockerfile} is not in the build context {context}")]
    NoDockerfile {
        context: PathBuf,
        dockerfile: String,
    },
    #[error("{path}:{line}: `{pattern}` is not a valid .dockerignore pattern: {message}")]
    BadPattern {
        path: PathBuf,
        line: usize,
        pattern: String,
        message: String,
    },
    #[error("cannot read {path} for the build context: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write the build context archive: {0}")]
    Write(String),
}

/// `.dockerignore` rules: the last pattern matching a path (or one of its parent
/// directories) decides; `!pattern` re-includes.
#[derive(Debug, Default)]
pub struct IgnoreRules {
    rules: Vec<(GlobMatcher, bool)>,
}

impl IgnoreRules {
    pub fn parse(text: &str, source: &Path) -> Result<Self, ContextError> {
        let mut rules = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (include, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = clean(pattern);
            if pattern.is_empty() {
                continue;
            }
            // Like Go's filepath.Match, `*` stops at `/`.
            let glob = globset::GlobBuilder::new(&pattern)
                .literal_separator(true)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| ContextError::BadPattern {
                    path: source.to_owned(),
                    line: index + 1,
                    pattern: line.to_owned(),
                    message: e.to_string(),
                })?;
            rules.push((glob, include));
        }
        Ok(Self { rules })
    }

    /// Whether a path (relative to the context, `/`-separated) is left out.
    pub fn excludes(&self, path: &str) -> bool {
        let mut excluded = false;
        for (glob, include) in &self.rules {
            if matches_or_parent(glob, path) {
                excluded = !include;
            }
        }
        excluded
    }

    fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(_, include)| *include)
    }
}

fn clean(pattern: &str) -> String {
    let trimmed = pattern.trim_start_matches('/');
    let parts: Vec<&str> = trimmed
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    parts.join("/")
}

fn matches_or_parent(glob: &GlobMatcher, path: &str) -> bool {
    if glob.is_match(path) {
        return true;
    }
    let mut end = path.len();
    while let Some(slash) = path[..end].rfind('/') {
        if glob.is_match(&path[..slash]) {
            return true;
        }
        end = slash;
    }
    false
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packed {
    pub files: usize,
    pub bytes: u64,
}

/// Writes the context's tar archive to `out`.
pub fn pack(context: &Path, dockerfile: &str, out: &Path) -> Result<Packed, ContextError> {
    if !context.is_dir() {
        return Err(ContextError::Missing(context.to_owned()));
    }
    if !context.join(dockerfile).is_file() {
        return Err(ContextError::NoDockerfile {
            context: context.to_owned(),
            dockerfile: dockerfile.to_owned(),
        });
    }
    let ignore_path = context.join(".dockerignore");
    let rules = match std::fs::read_to_string(&ignore_path) {
        Ok(text) => IgnoreRules::parse(&text, &ignore_path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => IgnoreRules::default(),
        Err(e) => {
            return Err(ContextError::Read {
                path: ignore_path,
                message: e.to_string(),
            });
        }
    };
    let always = [clean(dockerfile), ".dockerignore".to_owned()];
    let file = File::create(out).map_err(|e| ContextError::Write(e.to_string()))?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    builder.follow_symlinks(false);
    let mut packed = Packed { files: 0, bytes: 0 };
    let prune_directories = !rules.has_exceptions();
    let mut walker = walkdir::WalkDir::new(context)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter();
    while let Some(entry) = walker.next() {
        let entry = entry.map_err(|e| ContextError::Read {
            path: e
                .path()
                .map(Path::to_owned)
                .unwrap_or_else(|| context.to_owned()),
            message: e.to_string(),
        })?;
        let relative = entry.path().strip_prefix(context).unwrap_or(entry.path());
        let name = relative.to_string_lossy().replace('\\', "/");
        let is_dir = entry.file_type().is_dir();
        if rules.excludes(&name) && !always.contains(&name) {
            if is_dir && prune_directories {
                walker.skip_current_dir();
            }
            continue;
        }
        if is_dir {
            builder
                .append_dir(relative, entry.path())
                .map_err(|e| ContextError::Write(e.to_string()))?;
            continue;
        }
        builder
            .append_path_with_name(entry.path(), relative)
            .map_err(|e| ContextError::Read {
                path: entry.path().to_owned(),
                message: e.to_string(),
            })?;
        packed.files += 1;
        packed.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
    }
    builder
        .into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(|e| ContextError::Write(e.to_string()))?;
    Ok(packed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> IgnoreRules {
        IgnoreRules::parse(text, Path::new(".dockerignore")).unwrap()
    }

    #[test]
    fn patterns_follow_docker_semantics() {
        let r = rules("# comment\nnode_modules\n*.log\n!keep.log\n/target\ndocs/**/*.md\n");
        assert!(r.excludes("node_modules"));
        assert!(
            r.excludes("node_modules/x/y.js"),
            "a directory pattern excludes what is inside"
        );
        assert!(r.excludes("debug.log"));
        assert!(!r.excludes("keep.log"), "a later ! pattern re-includes");
        assert!(
            !r.excludes("sub/debug.log"),
            "`*` does not cross directories"
        );
        assert!(r.excludes("target/release/app"));
        assert!(r.excludes("docs/a/b/c.md"));
        assert!(!r.excludes("docs/a/b/c.txt"));
        assert!(!r.excludes("src/main.rs"));
    }

    #[test]
    fn packing_honours_dockerignore_but_always_sends_the_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(root.join(".dockerignore"), "*\n!app\n").unwrap();
        std::fs::write(root.join("app"), "binary").unwrap();
        std::fs::write(root.join("secret.env"), "PASSWORD=x").unwrap();
        std::fs::create_dir(root.join("cache")).unwrap();
        std::fs::write(root.join("cache/big"), vec![0u8; 4096]).unwrap();
        let out = tempfile::NamedTempFile::new().unwrap();
        let packed = pack(root, "Dockerfile", out.path()).unwrap();
        let mut archive = tar::Archive::new(File::open(out.path()).unwrap());
        let mut names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(names, [".dockerignore", "Dockerfile", "app"]);
        assert_eq!(packed.files, 3);
    }

    #[test]
    fn a_missing_dockerfile_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::NamedTempFile::new().unwrap();
        let error = pack(dir.path(), "docker/Dockerfile.prod", out.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains("docker/Dockerfile.prod"), "{error}");
    }
}
