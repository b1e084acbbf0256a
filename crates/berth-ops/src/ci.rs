//! `berth ci init github|gitlab`: a workflow that runs the tests on every pull request and, on
//! the main branch, deploys with `berth deploy --build local`: the job builds the images with
//! the runner's Docker and streams them to the agent (no registry anywhere, no build load on
//! the server), and the job fails with the deploy's
//! reason and the failing container's last log lines when the health gate refuses the release.
//! Credentials are the CI system's secrets, never the file's: the agent's TLS API with its token
//! and pinned certificate fingerprint, or an SSH key for `ssh://`.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    GitLab,
}

impl Provider {
    /// Where the workflow is written, relative to the repository's root.
    pub fn path(self) -> &'static str {
        match self {
            Provider::GitHub => ".github/workflows/berth.yml",
            Provider::GitLab => ".gitlab-ci.yml",
        }
    }
}

/// How the deploy job reaches the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `BERTH_AGENT=https://HOST:PORT`, `BERTH_TOKEN`, `BERTH_AGENT_FINGERPRINT`.
    Token,
    /// `BERTH_AGENT=ssh://deploy@HOST` with `SSH_PRIVATE_KEY` and `SSH_KNOWN_HOSTS`.
    Ssh,
}

#[derive(Debug, Clone)]
pub struct Workflow {
    pub provider: Provider,
    pub access: Access,
    /// The command the test job runs.
    pub test_command: String,
    /// Where the test command came from, for the user.
    pub test_from: String,
    pub branch: String,
    /// `--env` for `berth deploy`, if any.
    pub environment: Option<String>,
    /// The image GitLab's test job runs in (GitHub's runners carry the usual toolchains).
    pub test_image: String,
}

/// A branch name the workflow can compare as written: no glob, nothing YAML or a shell reads.
pub fn valid_branch(branch: &str) -> bool {
    !branch.is_empty()
        && branch.len() <= 100
        && !branch.starts_with(['-', '/'])
        && branch
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

/// An image with the toolchain the test command needs, for GitLab's test job.
pub fn detect_test_image(dir: &Path) -> &'static str {
    let has = |name: &str| dir.join(name).is_file();
    if has("Cargo.toml") {
        "rust:1"
    } else if has("package.json") {
        "node:22"
    } else if has("uv.lock")
        || has("poetry.lock")
        || has("requirements.txt")
        || has("pyproject.toml")
    {
        "python:3.12"
    } else if has("go.mod") {
        "golang:1.23"
    } else if has("Gemfile") {
        "ruby:3.3"
    } else if has("composer.json") {
        "composer:2"
    } else if has("mix.exs") {
        "elixir:1.17"
    } else {
        "debian:bookworm"
    }
}

/// The test command a repository's files suggest.
pub fn detect_tests(dir: &Path) -> (String, String) {
    let has = |name: &str| dir.join(name).is_file();
    let candidates: &[(&str, &str)] = &[
        ("Cargo.toml", "cargo test --locked"),
        ("package-lock.json", "npm ci && npm test"),
        (
            "pnpm-lock.yaml",
            "corepack enable && pnpm install --frozen-lockfile && pnpm test",
        ),
        (
            "yarn.lock",
            "corepack enable && yarn install --immutable && yarn test",
        ),
        ("package.json", "npm install && npm test"),
        ("uv.lock", "pip install uv && uv sync && uv run pytest"),
        (
            "poetry.lock",
            "pip install poetry && poetry install && poetry run pytest",
        ),
        (
            "requirements.txt",
            "pip install -r requirements.txt && python -m pytest",
        ),
        ("pyproject.toml", "pip install . pytest && python -m pytest"),
        ("go.mod", "go test ./..."),
        ("Gemfile", "bundle install && bundle exec rake test"),
        ("composer.json", "composer install && vendor/bin/phpunit"),
        ("mix.exs", "mix deps.get && mix test"),
        ("Makefile", "make test"),
    ];
    for (file, command) in candidates {
        if has(file) {
            return ((*command).to_owned(), format!("{file} is here"));
        }
    }
    (
        "echo 'no tests yet: put the test command here' && false".to_owned(),
        "nothing here says how to run the tests: edit the test job".to_owned(),
    )
}

/// The shell lines the deploy job runs, once the credentials are in place: the same for
/// every CI system, and what the tests run against a real agent.
pub fn deploy_script(revision_variable: &str, environment: Option<&str>) -> Vec<String> {
    let env_flag = environment
        .map(|e| format!(" --env {e}"))
        .unwrap_or_default();
    vec![
        "berth version".to_owned(),
        format!("berth deploy{env_flag} --build local --version \"${revision_variable}\" --wait"),
    ]
}

fn yaml_string(text: &str) -> String {
    // Double-quoted YAML: escape what YAML escapes.
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Workflow {
    pub fn render(&self) -> String {
        match self.provider {
            Provider::GitHub => self.github(),
            Provider::GitLab => self.gitlab(),
        }
    }

    fn secrets_comment(&self, place: &str) -> String {
        let list = match self.access {
            Access::Token => {
                "#   BERTH_AGENT              https://HOST:7070 (the agent started with --api https://0.0.0.0:7070)\n#   BERTH_TOKEN              the agent's API token (DATA_DIR/api-token on the server)\n#   BERTH_AGENT_FINGERPRINT  the fingerprint the agent prints at start (api_fingerprint in DATA_DIR/agent.json)\n"
            }
            Access::Ssh => {
                "#   BERTH_AGENT              ssh://deploy@HOST (a user allowed to use the agent's socket)\n#   SSH_PRIVATE_KEY          a key made for this job only (ssh-keygen -t ed25519 -N '')\n#   SSH_KNOWN_HOSTS          the server's host key line (ssh-keyscan HOST)\n"
            }
        };
        format!(
            "# Written by `berth ci init`. Tests run on every pull request; a push to {} deploys.\n# The deploy job builds the images on the runner and streams them to the agent: no registry,\n# no build on the server. It fails the job, with the reason and the failing container's last log\n# lines, when the new release does not pass its health gate (the old one keeps serving).\n#\n# {place}:\n{list}#   BERTH_DOWNLOAD_URL       where the job downloads the berth binary (a variable, not secret)\n#   BERTH_SHA256             that binary's SHA-256 (a variable): the job refuses any other\n",
            self.branch
        )
    }

    fn install_lines(&self) -> Vec<String> {
        let mut lines = match self.provider {
            // The runner's user cannot write /usr/local/bin; its own bin directory joins PATH.
            // The binary gets the token: it must be the one expected (BERTH_SHA256).
            Provider::GitHub => vec![
                "mkdir -p \"$HOME/.local/bin\"".to_owned(),
                "curl --fail --silent --show-error --location \"$BERTH_DOWNLOAD_URL\" --output \"$HOME/.local/bin/berth\"".to_owned(),
                "echo \"$BERTH_SHA256  $HOME/.local/bin/berth\" | sha256sum --check --strict".to_owned(),
                "chmod +x \"$HOME/.local/bin/berth\"".to_owned(),
                "echo \"$HOME/.local/bin\" >> \"$GITHUB_PATH\"".to_owned(),
            ],
            Provider::GitLab => vec![
                "curl --fail --silent --show-error --location \"$BERTH_DOWNLOAD_URL\" --output /usr/local/bin/berth".to_owned(),
                "echo \"$BERTH_SHA256  /usr/local/bin/berth\" | sha256sum --check --strict".to_owned(),
                "chmod +x /usr/local/bin/berth".to_owned(),
            ],
        };
        if self.access == Access::Ssh {
            lines.extend([
                "install -d -m 700 ~/.ssh".to_owned(),
                "printf '%s\\n' \"$SSH_PRIVATE_KEY\" > ~/.ssh/id_ed25519 && chmod 600 ~/.ssh/id_ed25519".to_owned(),
                "printf '%s\\n' \"$SSH_KNOWN_HOSTS\" > ~/.ssh/known_hosts".to_owned(),
            ]);
        }
        lines
    }

    fn github(&self) -> String {
        let mut out = self
            .secrets_comment("Repository settings → Secrets and variables → Actions: the secrets");
        let env_lines = match self.access {
            Access::Token => {
                "      BERTH_AGENT: ${{ secrets.BERTH_AGENT }}\n      BERTH_TOKEN: ${{ secrets.BERTH_TOKEN }}\n      BERTH_AGENT_FINGERPRINT: ${{ secrets.BERTH_AGENT_FINGERPRINT }}\n"
            }
            Access::Ssh => {
                "      BERTH_AGENT: ${{ secrets.BERTH_AGENT }}\n      SSH_PRIVATE_KEY: ${{ secrets.SSH_PRIVATE_KEY }}\n      SSH_KNOWN_HOSTS: ${{ secrets.SSH_KNOWN_HOSTS }}\n"
            }
        };
        let run = |lines: &[String]| {
            let mut text = String::from("        run: |\n");
            for line in lines {
                text.push_str("          ");
                text.push_str(line);
                text.push('\n');
            }
            text
        };
        out.push_str(&format!(
            "name: berth\n\non:\n  pull_request:\n  push:\n    branches: [{branch}]\n\npermissions:\n  contents: read\n\njobs:\n  test:\n    runs-on: ubuntu-latest\n    timeout-minutes: 30\n    steps:\n      - uses: actions/checkout@v4\n      - name: Test\n        # {from}\n        run: {test}\n\n  deploy:\n    if: github.event_name == 'push' && github.ref == 'refs/heads/{branch}'\n    needs: test\n    runs-on: ubuntu-latest\n    timeout-minutes: 20\n    environment: {environment}\n    # One deploy at a time; a newer push waits instead of cancelling one in flight.\n    concurrency:\n      group: berth-deploy\n      cancel-in-progress: false\n    env:\n      BERTH_DOWNLOAD_URL: ${{{{ vars.BERTH_DOWNLOAD_URL }}}}\n      BERTH_SHA256: ${{{{ vars.BERTH_SHA256 }}}}\n{env_lines}    steps:\n      - uses: actions/checkout@v4\n      - name: Install berth\n{install}      - name: Deploy\n{deploy}      - name: Show the app's state\n        if: failure()\n        run: berth status || true\n",
            branch = self.branch,
            from = self.test_from,
            test = yaml_string(&self.test_command),
            install = run(&self.install_lines()),
            deploy = run(&deploy_script("GITHUB_SHA", self.environment.as_deref())),
            environment = self.environment.as_deref().unwrap_or("production"),
        ));
        out
    }

    fn gitlab(&self) -> String {
        let mut out = self.secrets_comment("Settings → CI/CD → Variables (protected; masked where GitLab can mask them: not a multi-line SSH key)");
        let list = |lines: &[String]| {
            lines
                .iter()
                .map(|l| format!("    - {}\n", yaml_string(l)))
                .collect::<String>()
        };
        out.push_str(&format!(
            "stages: [test, deploy]\n\ntest:\n  stage: test\n  image: {image}\n  # {from}\n  script:\n    - {test}\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"merge_request_event\"\n    - if: $CI_COMMIT_BRANCH == \"{branch}\"\n\ndeploy:\n  stage: deploy\n  image: debian:bookworm-slim\n  # The images are built with Docker in Docker (a runner that allows privileged services).\n  services:\n    - name: docker:27-dind\n      alias: docker\n  variables:\n    DOCKER_HOST: tcp://docker:2375\n    DOCKER_TLS_CERTDIR: \"\"\n  # One deploy at a time.\n  resource_group: {environment}\n  environment: {environment}\n  timeout: 20 minutes\n  rules:\n    - if: $CI_COMMIT_BRANCH == \"{branch}\"\n  before_script:\n    - apt-get update -qq && apt-get install -y -qq --no-install-recommends curl ca-certificates docker.io{ssh}\n{install}  script:\n{deploy}  after_script:\n    - if [ \"$CI_JOB_STATUS\" = failed ]; then berth status || true; fi\n",
            from = self.test_from,
            test = yaml_string(&self.test_command),
            branch = self.branch,
            ssh = if self.access == Access::Ssh { " openssh-client" } else { "" },
            install = list(&self.install_lines()),
            deploy = list(&deploy_script("CI_COMMIT_SHA", self.environment.as_deref())),
            image = self.test_image,
            environment = self.environment.as_deref().unwrap_or("production"),
        ));
        out
    }
}
