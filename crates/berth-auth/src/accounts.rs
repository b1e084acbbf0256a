//! Console accounts: users with a role, password logins with lockout, sessions, and one-time
//! links (first setup, password reset). Everything is kept through [`AccountStore`]; secrets
//! that are presented later (session ids, link ids) are stored only as SHA-256, passwords only
//! as argon2id.

use crate::passwords::{self, Policy, PolicyError};
use crate::tokens::{Scope, constant_time_eq};
use crate::totp;
use sha2::{Digest, Sha256};
use std::fmt;

/// What a user may do; the same ladder as API token scopes, so the console's requests are
/// checked by the same table as the API's.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything a read token reads.
    Viewer,
    /// Also deploys, rolls back, restarts, toggles maintenance and runs backups.
    Deployer,
    /// Everything, users included.
    Admin,
}

impl Role {
    pub fn scope(self) -> Scope {
        match self {
            Role::Viewer => Scope::Read,
            Role::Deployer => Scope::Deploy,
            Role::Admin => Scope::Admin,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "deployer" => Ok(Role::Deployer),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("`{text}` is not a role: viewer, deployer or admin")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    /// May log in (once a password is set).
    Active,
    /// Cannot log in; sessions were revoked when it was disabled.
    Disabled,
    /// Asked for an account from the sign-up form: waits for an admin's approval.
    Pending,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Disabled => "disabled",
            UserStatus::Pending => "pending",
        }
    }
}

impl std::str::FromStr for UserStatus {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "active" => Ok(UserStatus::Active),
            "disabled" => Ok(UserStatus::Disabled),
            "pending" => Ok(UserStatus::Pending),
            _ => Err(format!("`{text}` is not a user status")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub role: Role,
    pub status: UserStatus,
    /// argon2id in PHC form; `None` until the user sets one from their setup link.
    pub password_hash: Option<String>,
    pub created_ms: i64,
    pub created_by: String,
    /// Failed logins since the last success or lockout.
    pub failed_logins: u32,
    pub locked_until_ms: Option<i64>,
    pub last_login_ms: Option<i64>,
    /// The TOTP secret once two-factor logins are on.
    pub totp_secret: Option<Vec<u8>>,
    /// A secret being enrolled (shown as a QR code, not yet confirmed with a code).
    pub totp_pending: Option<Vec<u8>>,
    /// The last time step a code was accepted for: a code works once.
    pub totp_last_step: Option<i64>,
    /// SHA-256 of each unused recovery code.
    pub recovery_codes: Vec<String>,
}

impl UserRecord {
    pub fn new(name: &str, role: Role, created_ms: i64, created_by: &str) -> Self {
        UserRecord {
            name: name.to_owned(),
            role,
            status: UserStatus::Active,
            password_hash: None,
            created_ms,
            created_by: created_by.to_owned(),
            failed_logins: 0,
            locked_until_ms: None,
            last_login_ms: None,
            totp_secret: None,
            totp_pending: None,
            totp_last_step: None,
            recovery_codes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// SHA-256 of the session id the browser holds, hex.
    pub id_hash: String,
    pub user: String,
    /// The token every state-changing request of this session carries.
    pub csrf: String,
    pub created_ms: i64,
    pub last_seen_ms: i64,
    pub ip: String,
    pub user_agent: String,
    /// The password was right and the second factor is still to come: this session opens
    /// nothing but the code form, and only for [`SECOND_FACTOR_MS`].
    pub second_factor_pending: bool,
    /// The app host this session opens (a route with `auth = "berth"`), never the console;
    /// `None` for a console session, which opens no app host.
    pub host: Option<String>,
    /// The login behind it took a second factor (routes with `two_factor = true` ask this, not
    /// merely that the account has one: enrolling takes only a session).
    pub second_factor: bool,
}

/// How long the code form waits after the password.
pub const SECOND_FACTOR_MS: i64 = 5 * 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkPurpose {
    /// The first password of a new user.
    Setup,
    /// A new password for a user who lost theirs.
    Reset,
}

impl LinkPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkPurpose::Setup => "setup",
            LinkPurpose::Reset => "reset",
        }
    }
}

impl std::str::FromStr for LinkPurpose {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "setup" => Ok(LinkPurpose::Setup),
            "reset" => Ok(LinkPurpose::Reset),
            _ => Err(format!("`{text}` is not a link purpose")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRecord {
    /// SHA-256 of the link's secret, hex.
    pub id_hash: String,
    pub user: String,
    pub purpose: LinkPurpose,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub used_ms: Option<i64>,
}

/// Held across every read-check-write of an account (a login, a second factor, a link, an
/// admin's change), so two of them never interleave: a login that checked a password cannot
/// write back a role or status an admin changed meanwhile, and parallel wrong passwords or a
/// code sent twice at once cannot slip past the counters. One agent process owns the state
/// file, so a process-wide lock is enough.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where accounts are kept.
pub trait AccountStore {
    type Error: fmt::Display;
    fn user(&self, name: &str) -> Result<Option<UserRecord>, Self::Error>;
    fn users(&self) -> Result<Vec<UserRecord>, Self::Error>;
    /// Adds a user; `false` when the name is taken.
    fn insert_user(&self, user: &UserRecord) -> Result<bool, Self::Error>;
    /// Replaces a user's record.
    fn update_user(&self, user: &UserRecord) -> Result<(), Self::Error>;
    /// Removes a user (a denied sign-up request), with their sessions and links.
    fn delete_user(&self, name: &str) -> Result<(), Self::Error>;
    /// Spends every link of a user (one was used: the others must not work after it).
    fn delete_links_of(&self, user: &str) -> Result<(), Self::Error>;
    fn insert_session(&self, session: &SessionRecord) -> Result<(), Self::Error>;
    fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, Self::Error>;
    fn touch_session(&self, id_hash: &str, at_ms: i64) -> Result<(), Self::Error>;
    fn delete_session(&self, id_hash: &str) -> Result<(), Self::Error>;
    /// Ends every session of a user; how many there were.
    fn delete_sessions_of(&self, user: &str) -> Result<usize, Self::Error>;
    fn insert_link(&self, link: &LinkRecord) -> Result<(), Self::Error>;
    fn link(&self, id_hash: &str) -> Result<Option<LinkRecord>, Self::Error>;
    /// Marks an unused, unexpired link used and returns it; `None` when another request took
    /// it first or it is spent. Must be atomic: a link works once.
    fn take_link(&self, id_hash: &str, now_ms: i64) -> Result<Option<LinkRecord>, Self::Error>;
    /// A console setting (`require_2fa`).
    fn setting(&self, key: &str) -> Result<Option<String>, Self::Error>;
    fn set_setting(&self, key: &str, value: &str) -> Result<(), Self::Error>;
}

/// The setting that makes two-factor logins compulsory.
pub const REQUIRE_2FA: &str = "require_2fa";

/// The setting that opens the sign-up form (`open`); closed unless set.
pub const SIGN_UP: &str = "sign_up";

/// Whether the login page offers a form to ask for an account.
pub fn sign_up_open<S: AccountStore>(store: &S) -> Result<bool, S::Error> {
    Ok(store.setting(SIGN_UP)?.as_deref() == Some("open"))
}

#[derive(Debug, thiserror::Error)]
pub enum SignUpError {
    #[error("sign-up is closed on this console: ask an admin for an account")]
    Closed,
    #[error(
        "a name is 2 to 64 lower-case letters, digits, `-`, `_` and `.`, starting with a letter"
    )]
    Name,
    /// The name is someone's already; the form answers as for a request taken, so it tells
    /// nobody which names exist.
    #[error("the name is taken")]
    Taken,
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Store(String),
}

/// A request for an account: a viewer with the chosen password, pending until an admin
/// approves it. A taken name says the same as an invalid one, so the form tells nobody which
/// names exist.
pub fn sign_up<S: AccountStore>(
    store: &S,
    settings: &Settings,
    name: &str,
    password: &str,
    now_ms: i64,
    from: &str,
) -> Result<UserRecord, SignUpError> {
    let _exclusive = exclusive();
    if !sign_up_open(store).map_err(|e| SignUpError::Store(e.to_string()))? {
        return Err(SignUpError::Closed);
    }
    if !valid_user_name(name) {
        return Err(SignUpError::Name);
    }
    settings.policy.check(name, password)?;
    let hash = passwords::hash_password(password).map_err(|e| SignUpError::Store(e.to_string()))?;
    let mut user = UserRecord::new(name, Role::Viewer, now_ms, &format!("sign-up from {from}"));
    user.status = UserStatus::Pending;
    user.password_hash = Some(hash);
    if !store
        .insert_user(&user)
        .map_err(|e| SignUpError::Store(e.to_string()))?
    {
        return Err(SignUpError::Taken);
    }
    Ok(user)
}

/// Whether every user must log in with a second factor.
pub fn two_factor_required<S: AccountStore>(store: &S) -> Result<bool, S::Error> {
    Ok(store.setting(REQUIRE_2FA)?.as_deref() == Some("true"))
}

/// How logins and sessions behave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Failed logins in a row that lock an account.
    pub max_failures: u32,
    pub lockout_ms: i64,
    /// A session unused this long ends.
    pub idle_ms: i64,
    /// A session ends this long after login, used or not.
    pub absolute_ms: i64,
    /// How long a setup or reset link works.
    pub link_ms: i64,
    pub policy: Policy,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_failures: 5,
            lockout_ms: 15 * 60_000,
            idle_ms: 2 * 3_600_000,
            absolute_ms: 12 * 3_600_000,
            link_ms: 3_600_000,
            policy: Policy::default(),
        }
    }
}

pub(crate) fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

pub(crate) fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// A user name: lower-case letters, digits, `-`, `_` and `.`, 2 to 64, starting with a letter.
pub fn valid_user_name(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// Where a login comes from, for the record.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub ip: String,
    pub user_agent: String,
}

/// A session just made: `cookie` goes to the browser once; `record` is stored.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub cookie: String,
    pub record: SessionRecord,
}

/// Why a login did not succeed. What the person at the form is told is the same for a wrong
/// name, a wrong password and a locked or disabled account; the audit log gets the reason.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("no such user")]
    UnknownUser,
    #[error("wrong password")]
    WrongPassword { locked_now: bool },
    #[error("wrong second-factor code")]
    WrongCode { locked_now: bool },
    #[error("the account is locked after too many failed logins")]
    Locked { until_ms: i64 },
    #[error("the account is disabled")]
    Disabled,
    #[error("the account waits for an admin's approval")]
    Pending,
    #[error("the account has no password yet (its setup link sets one)")]
    NoPassword,
    #[error("cannot read the accounts: {0}")]
    Store(String),
}

impl LoginError {
    /// What the login form says: never which of name or password was wrong.
    pub fn public_message(&self) -> &'static str {
        match self {
            LoginError::Store(_) => "the console cannot read its accounts; see the agent's log",
            _ => {
                "wrong name or password, or the account is locked after too many failed attempts (it unlocks after 15 minutes)"
            }
        }
    }
}

fn store_error(error: impl fmt::Display) -> LoginError {
    LoginError::Store(error.to_string())
}

/// Checks a name and password and, when they are right, opens a session. Failures count
/// towards the account's lockout; a locked account is refused without its password being
/// checked. An unknown name costs as much time as a known one.
pub fn login<S: AccountStore>(
    store: &S,
    settings: &Settings,
    name: &str,
    password: &str,
    client: &Client,
    now_ms: i64,
) -> Result<NewSession, LoginError> {
    let _exclusive = exclusive();
    let Some(mut user) = store.user(name).map_err(store_error)? else {
        passwords::verify_password(passwords::decoy_hash(), password);
        return Err(LoginError::UnknownUser);
    };
    if let Some(until) = user.locked_until_ms
        && until > now_ms
    {
        // As slow as any other answer: the time says nothing of which names exist.
        passwords::verify_password(passwords::decoy_hash(), password);
        return Err(LoginError::Locked { until_ms: until });
    }
    let Some(stored) = user.password_hash.clone() else {
        passwords::verify_password(passwords::decoy_hash(), password);
        return Err(LoginError::NoPassword);
    };
    if !passwords::verify_password(&stored, password) {
        user.failed_logins += 1;
        let locked_now = user.failed_logins >= settings.max_failures;
        if locked_now {
            user.failed_logins = 0;
            user.locked_until_ms = Some(now_ms + settings.lockout_ms);
        }
        store.update_user(&user).map_err(store_error)?;
        return Err(LoginError::WrongPassword { locked_now });
    }
    match user.status {
        UserStatus::Disabled => return Err(LoginError::Disabled),
        UserStatus::Pending => return Err(LoginError::Pending),
        UserStatus::Active => {}
    }
    let pending = user.totp_secret.is_some();
    // With a second factor, the failures count on until the code is right: a password alone
    // never clears the way for more guesses at the code.
    if !pending {
        user.failed_logins = 0;
    }
    user.locked_until_ms = None;
    if passwords::needs_rehash(&stored)
        && let Ok(upgraded) = passwords::hash_password(password)
    {
        user.password_hash = Some(upgraded);
    }
    if !pending {
        user.last_login_ms = Some(now_ms);
    }
    store.update_user(&user).map_err(store_error)?;
    let mut session = open_session(store, &user.name, client, now_ms).map_err(store_error)?;
    if pending {
        session.record.second_factor_pending = true;
        store
            .delete_session(&session.record.id_hash)
            .map_err(store_error)?;
        store.insert_session(&session.record).map_err(store_error)?;
    }
    Ok(session)
}

/// The second step of a login with two factors: a code from the authenticator (or an unused
/// recovery code) for the session the password opened half-way. Wrong codes count towards
/// the lockout like wrong passwords. The half session is replaced by a new, whole one.
pub fn second_factor<S: AccountStore>(
    store: &S,
    settings: &Settings,
    cookie: &str,
    code: &str,
    client: &Client,
    now_ms: i64,
) -> Result<NewSession, LoginError> {
    let _exclusive = exclusive();
    let Some((session, mut user)) = pending_session(store, cookie, now_ms).map_err(store_error)?
    else {
        return Err(LoginError::UnknownUser);
    };
    if let Some(until) = user.locked_until_ms
        && until > now_ms
    {
        return Err(LoginError::Locked { until_ms: until });
    }
    let Some(secret) = user.totp_secret.clone() else {
        return Err(LoginError::UnknownUser);
    };
    let recovery = totp::recovery_hash(code);
    if let Some(step) = totp::verify(&secret, code, now_ms, user.totp_last_step) {
        user.totp_last_step = Some(step);
    } else if code.chars().filter(char::is_ascii_alphanumeric).count() == 10
        && let Some(index) = user
            .recovery_codes
            .iter()
            .position(|kept| constant_time_eq(kept.as_bytes(), recovery.as_bytes()))
    {
        user.recovery_codes.remove(index);
    } else {
        user.failed_logins += 1;
        let locked_now = user.failed_logins >= settings.max_failures;
        if locked_now {
            user.failed_logins = 0;
            user.locked_until_ms = Some(now_ms + settings.lockout_ms);
            store
                .delete_session(&session.id_hash)
                .map_err(store_error)?;
        }
        store.update_user(&user).map_err(store_error)?;
        return Err(LoginError::WrongCode { locked_now });
    }
    user.failed_logins = 0;
    user.last_login_ms = Some(now_ms);
    store.update_user(&user).map_err(store_error)?;
    store
        .delete_session(&session.id_hash)
        .map_err(store_error)?;
    open_scoped_session(store, &user.name, client, None, true, now_ms).map_err(store_error)
}

/// The half-open session a cookie names (password right, code to come), within its time.
pub fn pending_session<S: AccountStore>(
    store: &S,
    cookie: &str,
    now_ms: i64,
) -> Result<Option<(SessionRecord, UserRecord)>, S::Error> {
    if cookie.len() != 64 || !cookie.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let Some(session) = store.session(&sha256_hex(cookie))? else {
        return Ok(None);
    };
    if !session.second_factor_pending
        || session.host.is_some()
        || now_ms - session.created_ms > SECOND_FACTOR_MS
    {
        return Ok(None);
    }
    Ok(store
        .user(&session.user)?
        .filter(|u| u.status == UserStatus::Active)
        .map(|user| (session, user)))
}

/// Why an enrolment step failed.
#[derive(Debug, thiserror::Error)]
pub enum TotpError {
    #[error(
        "that code is not the one the authenticator shows now: check the phone's clock and try the next code"
    )]
    WrongCode,
    #[error("no enrolment is in progress: start again")]
    NotStarted,
    #[error("two-factor logins are not on for this account")]
    NotOn,
    #[error("two-factor logins are on already: turn them off first (that takes a current code)")]
    AlreadyOn,
    #[error("{0}")]
    Store(String),
}

/// Starts enrolment: a new secret, kept aside until a code confirms it.
pub fn begin_totp<S: AccountStore>(store: &S, user: &str) -> Result<Vec<u8>, TotpError> {
    let _exclusive = exclusive();
    let mut record = store
        .user(user)
        .map_err(|e| TotpError::Store(e.to_string()))?
        .ok_or(TotpError::NotStarted)?;
    // Replacing the authenticator takes the old one: turn it off first, with a code.
    if record.totp_secret.is_some() {
        return Err(TotpError::AlreadyOn);
    }
    let secret = totp::new_secret();
    record.totp_pending = Some(secret.clone());
    store
        .update_user(&record)
        .map_err(|e| TotpError::Store(e.to_string()))?;
    Ok(secret)
}

/// Confirms enrolment with a code of the new secret: two-factor logins are on, and the
/// recovery codes (returned once) replace any earlier ones.
pub fn confirm_totp<S: AccountStore>(
    store: &S,
    user: &str,
    code: &str,
    now_ms: i64,
) -> Result<Vec<String>, TotpError> {
    let _exclusive = exclusive();
    let mut record = store
        .user(user)
        .map_err(|e| TotpError::Store(e.to_string()))?
        .ok_or(TotpError::NotStarted)?;
    let secret = record.totp_pending.clone().ok_or(TotpError::NotStarted)?;
    let step = totp::verify(&secret, code, now_ms, None).ok_or(TotpError::WrongCode)?;
    let (shown, kept) = totp::recovery_codes();
    record.totp_secret = Some(secret);
    record.totp_pending = None;
    record.totp_last_step = Some(step);
    record.recovery_codes = kept;
    store
        .update_user(&record)
        .map_err(|e| TotpError::Store(e.to_string()))?;
    Ok(shown)
}

/// Turns two-factor logins off, with a current code as proof.
pub fn disable_totp<S: AccountStore>(
    store: &S,
    user: &str,
    code: &str,
    now_ms: i64,
) -> Result<(), TotpError> {
    let _exclusive = exclusive();
    let mut record = store
        .user(user)
        .map_err(|e| TotpError::Store(e.to_string()))?
        .ok_or(TotpError::NotOn)?;
    let secret = record.totp_secret.clone().ok_or(TotpError::NotOn)?;
    totp::verify(&secret, code, now_ms, record.totp_last_step).ok_or(TotpError::WrongCode)?;
    record.totp_secret = None;
    record.totp_last_step = None;
    record.recovery_codes.clear();
    store
        .update_user(&record)
        .map_err(|e| TotpError::Store(e.to_string()))
}

/// A fresh session for `user` (a login, or a privilege change that must not keep the old id).
pub fn open_session<S: AccountStore>(
    store: &S,
    user: &str,
    client: &Client,
    now_ms: i64,
) -> Result<NewSession, S::Error> {
    open_scoped_session(store, user, client, None, false, now_ms)
}

/// A fresh session that opens the app host `host` only, or the console when `None`.
pub(crate) fn open_scoped_session<S: AccountStore>(
    store: &S,
    user: &str,
    client: &Client,
    host: Option<String>,
    second_factor: bool,
    now_ms: i64,
) -> Result<NewSession, S::Error> {
    let cookie = random_hex();
    let record = SessionRecord {
        id_hash: sha256_hex(&cookie),
        user: user.to_owned(),
        csrf: random_hex(),
        created_ms: now_ms,
        last_seen_ms: now_ms,
        ip: client.ip.chars().take(64).collect(),
        user_agent: client.user_agent.chars().take(256).collect(),
        second_factor_pending: false,
        host,
        second_factor,
    };
    store.insert_session(&record)?;
    Ok(NewSession { cookie, record })
}

/// The live session a cookie names, with its user: `None` for an unknown, expired or
/// malformed cookie, or a user who is disabled or gone (the session is then removed).
pub fn session_user<S: AccountStore>(
    store: &S,
    settings: &Settings,
    cookie: &str,
    now_ms: i64,
) -> Result<Option<(SessionRecord, UserRecord)>, S::Error> {
    scoped_session_user(store, settings, cookie, None, now_ms)
}

/// Like [`session_user`], for a session that opens the app host `host` (and nothing else).
pub fn app_session_user<S: AccountStore>(
    store: &S,
    settings: &Settings,
    cookie: &str,
    host: &str,
    now_ms: i64,
) -> Result<Option<(SessionRecord, UserRecord)>, S::Error> {
    scoped_session_user(store, settings, cookie, Some(host), now_ms)
}

fn scoped_session_user<S: AccountStore>(
    store: &S,
    settings: &Settings,
    cookie: &str,
    host: Option<&str>,
    now_ms: i64,
) -> Result<Option<(SessionRecord, UserRecord)>, S::Error> {
    if cookie.len() != 64 || !cookie.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let id_hash = sha256_hex(cookie);
    let Some(session) = store.session(&id_hash)? else {
        return Ok(None);
    };
    // A console cookie opens no app, and an app's cookie (which its app could read, were it
    // not stripped) never opens the console or another app.
    if session.second_factor_pending || session.host.as_deref() != host {
        return Ok(None);
    }
    let expired = now_ms - session.last_seen_ms > settings.idle_ms
        || now_ms - session.created_ms > settings.absolute_ms;
    let user = store
        .user(&session.user)?
        .filter(|u| u.status == UserStatus::Active);
    let Some(user) = user.filter(|_| !expired) else {
        store.delete_session(&id_hash)?;
        return Ok(None);
    };
    // The last use, to the minute: not a write per request.
    if now_ms - session.last_seen_ms > 60_000 {
        store.touch_session(&id_hash, now_ms)?;
    }
    Ok(Some((session, user)))
}

/// Ends the session a cookie names.
pub fn close_session<S: AccountStore>(store: &S, cookie: &str) -> Result<(), S::Error> {
    store.delete_session(&sha256_hex(cookie))
}

/// Whether a presented CSRF token is this session's.
pub fn csrf_matches(session: &SessionRecord, presented: &str) -> bool {
    constant_time_eq(session.csrf.as_bytes(), presented.as_bytes())
}

/// A one-time link's secret (for the URL, shown once) and its stored record.
pub fn issue_link(
    user: &str,
    purpose: LinkPurpose,
    now_ms: i64,
    settings: &Settings,
) -> (String, LinkRecord) {
    let secret = random_hex();
    let record = LinkRecord {
        id_hash: sha256_hex(&secret),
        user: user.to_owned(),
        purpose,
        created_ms: now_ms,
        expires_ms: now_ms + settings.link_ms,
        used_ms: None,
    };
    (secret, record)
}

/// The link a secret names, if it can still be used (for showing its form).
pub fn usable_link<S: AccountStore>(
    store: &S,
    secret: &str,
    now_ms: i64,
) -> Result<Option<LinkRecord>, S::Error> {
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    Ok(store
        .link(&sha256_hex(secret))?
        .filter(|l| l.used_ms.is_none() && l.expires_ms > now_ms))
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "this link was used already, has expired, or never existed: ask an admin for a new one (`berth users reset NAME`)"
    )]
    Spent,
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("the account this link was for is gone or disabled")]
    NoUser,
    #[error("{0}")]
    Store(String),
}

/// Sets the password a setup or reset link is for, once; every session of the user ends.
/// Returns the user, for a session to be opened.
pub fn redeem_link<S: AccountStore>(
    store: &S,
    settings: &Settings,
    secret: &str,
    password: &str,
    now_ms: i64,
) -> Result<UserRecord, LinkError> {
    let _exclusive = exclusive();
    let Some(link) =
        usable_link(store, secret, now_ms).map_err(|e| LinkError::Store(e.to_string()))?
    else {
        return Err(LinkError::Spent);
    };
    // The policy before the link is spent: a refused password leaves the link usable.
    settings.policy.check(&link.user, password)?;
    let hash = passwords::hash_password(password).map_err(|e| LinkError::Store(e.to_string()))?;
    let Some(link) = store
        .take_link(&link.id_hash, now_ms)
        .map_err(|e| LinkError::Store(e.to_string()))?
    else {
        return Err(LinkError::Spent);
    };
    let mut user = store
        .user(&link.user)
        .map_err(|e| LinkError::Store(e.to_string()))?
        .filter(|u| u.status == UserStatus::Active)
        .ok_or(LinkError::NoUser)?;
    // A setup link sets a first password, never a later one (a reset link does that).
    if link.purpose == LinkPurpose::Setup && user.password_hash.is_some() {
        return Err(LinkError::Spent);
    }
    store
        .delete_links_of(&user.name)
        .map_err(|e| LinkError::Store(e.to_string()))?;
    user.password_hash = Some(hash);
    user.failed_logins = 0;
    user.locked_until_ms = None;
    // Setting the password logs the user in.
    user.last_login_ms = Some(now_ms);
    if link.purpose == LinkPurpose::Reset {
        // A reset is for a lost password or a lost phone: they enrol again.
        user.totp_secret = None;
        user.totp_pending = None;
        user.recovery_codes.clear();
    }
    store
        .update_user(&user)
        .map_err(|e| LinkError::Store(e.to_string()))?;
    store
        .delete_sessions_of(&user.name)
        .map_err(|e| LinkError::Store(e.to_string()))?;
    Ok(user)
}

/// An in-memory store, for tests of this crate and of the console.
pub mod memory {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct MemoryAccounts {
        users: Mutex<BTreeMap<String, UserRecord>>,
        sessions: Mutex<BTreeMap<String, SessionRecord>>,
        links: Mutex<BTreeMap<String, LinkRecord>>,
        settings: Mutex<BTreeMap<String, String>>,
    }

    #[derive(Debug)]
    pub struct Poisoned;

    impl fmt::Display for Poisoned {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a lock was poisoned")
        }
    }

    impl AccountStore for MemoryAccounts {
        type Error = Poisoned;
        fn user(&self, name: &str) -> Result<Option<UserRecord>, Poisoned> {
            Ok(self.users.lock().map_err(|_| Poisoned)?.get(name).cloned())
        }
        fn users(&self) -> Result<Vec<UserRecord>, Poisoned> {
            Ok(self
                .users
                .lock()
                .map_err(|_| Poisoned)?
                .values()
                .cloned()
                .collect())
        }
        fn insert_user(&self, user: &UserRecord) -> Result<bool, Poisoned> {
            let mut users = self.users.lock().map_err(|_| Poisoned)?;
            if users.contains_key(&user.name) {
                return Ok(false);
            }
            users.insert(user.name.clone(), user.clone());
            Ok(true)
        }
        fn delete_user(&self, name: &str) -> Result<(), Poisoned> {
            self.users.lock().map_err(|_| Poisoned)?.remove(name);
            self.sessions
                .lock()
                .map_err(|_| Poisoned)?
                .retain(|_, s| s.user != name);
            Ok(())
        }
        fn delete_links_of(&self, user: &str) -> Result<(), Poisoned> {
            self.links
                .lock()
                .map_err(|_| Poisoned)?
                .retain(|_, l| l.user != user);
            Ok(())
        }
        fn update_user(&self, user: &UserRecord) -> Result<(), Poisoned> {
            self.users
                .lock()
                .map_err(|_| Poisoned)?
                .insert(user.name.clone(), user.clone());
            Ok(())
        }
        fn insert_session(&self, session: &SessionRecord) -> Result<(), Poisoned> {
            self.sessions
                .lock()
                .map_err(|_| Poisoned)?
                .insert(session.id_hash.clone(), session.clone());
            Ok(())
        }
        fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, Poisoned> {
            Ok(self
                .sessions
                .lock()
                .map_err(|_| Poisoned)?
                .get(id_hash)
                .cloned())
        }
        fn touch_session(&self, id_hash: &str, at_ms: i64) -> Result<(), Poisoned> {
            if let Some(s) = self.sessions.lock().map_err(|_| Poisoned)?.get_mut(id_hash) {
                s.last_seen_ms = at_ms;
            }
            Ok(())
        }
        fn delete_session(&self, id_hash: &str) -> Result<(), Poisoned> {
            self.sessions.lock().map_err(|_| Poisoned)?.remove(id_hash);
            Ok(())
        }
        fn delete_sessions_of(&self, user: &str) -> Result<usize, Poisoned> {
            let mut sessions = self.sessions.lock().map_err(|_| Poisoned)?;
            let before = sessions.len();
            sessions.retain(|_, s| s.user != user);
            Ok(before - sessions.len())
        }
        fn insert_link(&self, link: &LinkRecord) -> Result<(), Poisoned> {
            self.links
                .lock()
                .map_err(|_| Poisoned)?
                .insert(link.id_hash.clone(), link.clone());
            Ok(())
        }
        fn link(&self, id_hash: &str) -> Result<Option<LinkRecord>, Poisoned> {
            Ok(self
                .links
                .lock()
                .map_err(|_| Poisoned)?
                .get(id_hash)
                .cloned())
        }
        fn take_link(&self, id_hash: &str, now_ms: i64) -> Result<Option<LinkRecord>, Poisoned> {
            let mut links = self.links.lock().map_err(|_| Poisoned)?;
            match links.get_mut(id_hash) {
                Some(link) if link.used_ms.is_none() && link.expires_ms > now_ms => {
                    link.used_ms = Some(now_ms);
                    Ok(Some(link.clone()))
                }
                _ => Ok(None),
            }
        }
        fn setting(&self, key: &str) -> Result<Option<String>, Poisoned> {
            Ok(self
                .settings
                .lock()
                .map_err(|_| Poisoned)?
                .get(key)
                .cloned())
        }
        fn set_setting(&self, key: &str, value: &str) -> Result<(), Poisoned> {
            self.settings
                .lock()
                .map_err(|_| Poisoned)?
                .insert(key.to_owned(), value.to_owned());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::memory::MemoryAccounts;
    use super::*;

    const GOOD: &str = "tide pool lantern";

    fn with_user(store: &MemoryAccounts, settings: &Settings) {
        store
            .insert_user(&UserRecord::new("alice", Role::Deployer, 0, "root"))
            .unwrap();
        let (secret, link) = issue_link("alice", LinkPurpose::Setup, 0, settings);
        store.insert_link(&link).unwrap();
        redeem_link(store, settings, &secret, GOOD, 10).unwrap();
    }

    #[test]
    fn a_setup_link_sets_the_password_once() {
        let store = MemoryAccounts::default();
        let settings = Settings::default();
        store
            .insert_user(&UserRecord::new("alice", Role::Admin, 0, "root"))
            .unwrap();
        let (secret, link) = issue_link("alice", LinkPurpose::Setup, 0, &settings);
        store.insert_link(&link).unwrap();
        assert_ne!(link.id_hash, secret, "only the hash is stored");
        // A password the policy refuses leaves the link usable.
        assert!(matches!(
            redeem_link(&store, &settings, &secret, "short", 5),
            Err(LinkError::Policy(_))
        ));
        let user = redeem_link(&store, &settings, &secret, GOOD, 10).unwrap();
        assert_eq!(user.name, "alice");
        assert!(matches!(
            redeem_link(&store, &settings, &secret, GOOD, 20),
            Err(LinkError::Spent)
        ));
        // An expired link does nothing.
        let (late, link) = issue_link("alice", LinkPurpose::Reset, 0, &settings);
        store.insert_link(&link).unwrap();
        assert!(matches!(
            redeem_link(&store, &settings, &late, GOOD, settings.link_ms + 1),
            Err(LinkError::Spent)
        ));
        // A setup link does nothing once the user has a password (a reset link does that).
        let (other, link) = issue_link("alice", LinkPurpose::Setup, 0, &settings);
        store.insert_link(&link).unwrap();
        assert!(matches!(
            redeem_link(&store, &settings, &other, GOOD, 25),
            Err(LinkError::Spent)
        ));
        let session = login(&store, &settings, "alice", GOOD, &Client::default(), 30).unwrap();
        assert_eq!(session.record.user, "alice");
        assert_ne!(session.record.id_hash, session.cookie);
    }

    #[test]
    fn five_wrong_passwords_lock_the_account_for_fifteen_minutes() {
        let store = MemoryAccounts::default();
        let settings = Settings::default();
        with_user(&store, &settings);
        for attempt in 1..=5 {
            let error =
                login(&store, &settings, "alice", "wrong", &Client::default(), 100).unwrap_err();
            assert!(
                matches!(error, LoginError::WrongPassword { locked_now } if locked_now == (attempt == 5)),
                "{error:?}"
            );
        }
        // Locked: even the right password is refused, and says the same as a wrong one.
        let error = login(&store, &settings, "alice", GOOD, &Client::default(), 200).unwrap_err();
        assert!(matches!(error, LoginError::Locked { .. }), "{error:?}");
        assert_eq!(
            error.public_message(),
            LoginError::UnknownUser.public_message()
        );
        let later = 100 + settings.lockout_ms + 1;
        assert!(login(&store, &settings, "alice", GOOD, &Client::default(), later).is_ok());
        assert!(matches!(
            login(&store, &settings, "nobody", GOOD, &Client::default(), later),
            Err(LoginError::UnknownUser)
        ));
    }

    #[test]
    fn with_two_factors_the_password_opens_only_the_code_form() {
        let store = MemoryAccounts::default();
        let settings = Settings::default();
        with_user(&store, &settings);
        let now = 1_700_000_000_000;
        let secret = begin_totp(&store, "alice").unwrap();
        assert!(matches!(
            confirm_totp(&store, "alice", "12345x", now),
            Err(TotpError::WrongCode)
        ));
        let code = totp::code_at_step(&secret, totp::step_of(now));
        let recovery = confirm_totp(&store, "alice", &code, now).unwrap();
        assert_eq!(recovery.len(), 10);

        let half = login(&store, &settings, "alice", GOOD, &Client::default(), now).unwrap();
        assert!(half.record.second_factor_pending);
        assert!(
            session_user(&store, &settings, &half.cookie, now)
                .unwrap()
                .is_none()
        );
        // The code just used for enrolment does not work again.
        assert!(matches!(
            second_factor(
                &store,
                &settings,
                &half.cookie,
                &code,
                &Client::default(),
                now
            ),
            Err(LoginError::WrongCode { locked_now: false })
        ));
        let next = totp::code_at_step(&secret, totp::step_of(now) + 1);
        let whole = second_factor(
            &store,
            &settings,
            &half.cookie,
            &next,
            &Client::default(),
            now + 30_000,
        )
        .unwrap();
        assert_ne!(
            whole.cookie, half.cookie,
            "a new session id after the second factor"
        );
        assert!(
            whole.record.second_factor && !half.record.second_factor,
            "the session says its login took a code"
        );
        assert!(
            session_user(&store, &settings, &whole.cookie, now + 30_000)
                .unwrap()
                .is_some()
        );
        assert!(
            pending_session(&store, &half.cookie, now + 30_000)
                .unwrap()
                .is_none()
        );

        // A recovery code works once.
        let half = login(&store, &settings, "alice", GOOD, &Client::default(), now).unwrap();
        assert!(
            second_factor(
                &store,
                &settings,
                &half.cookie,
                &recovery[0],
                &Client::default(),
                now
            )
            .is_ok()
        );
        let half = login(&store, &settings, "alice", GOOD, &Client::default(), now).unwrap();
        assert!(
            second_factor(
                &store,
                &settings,
                &half.cookie,
                &recovery[0],
                &Client::default(),
                now
            )
            .is_err()
        );
        // The code form waits five minutes.
        let half = login(&store, &settings, "alice", GOOD, &Client::default(), now).unwrap();
        assert!(
            pending_session(&store, &half.cookie, now + SECOND_FACTOR_MS + 1)
                .unwrap()
                .is_none()
        );
        // A new authenticator needs the old one turned off first.
        assert!(matches!(
            begin_totp(&store, "alice"),
            Err(TotpError::AlreadyOn)
        ));
        // The right password does not clear the way for more guesses at the code: five wrong
        // codes over two logins lock the account.
        let mut fresh = store.user("alice").unwrap().unwrap();
        fresh.failed_logins = 0;
        store.update_user(&fresh).unwrap();
        for round in 0..2 {
            let half = login(&store, &settings, "alice", GOOD, &Client::default(), now).unwrap();
            let tries = if round == 0 { 4 } else { 1 };
            for attempt in 0..tries {
                let locked_now = round == 1 && attempt == 0;
                assert!(
                    matches!(
                        second_factor(&store, &settings, &half.cookie, "999999x", &Client::default(), now),
                        Err(LoginError::WrongCode { locked_now: l }) if l == locked_now
                    ),
                    "round {round} attempt {attempt}"
                );
            }
        }
        assert!(matches!(
            login(&store, &settings, "alice", GOOD, &Client::default(), now),
            Err(LoginError::Locked { .. })
        ));
    }

    #[test]
    fn a_sign_up_waits_for_approval_and_needs_the_form_open() {
        let store = MemoryAccounts::default();
        let settings = Settings::default();
        assert!(matches!(
            sign_up(&store, &settings, "sam", GOOD, 0, "127.0.0.1"),
            Err(SignUpError::Closed)
        ));
        store.set_setting(SIGN_UP, "open").unwrap();
        assert!(matches!(
            sign_up(&store, &settings, "sam", "short", 0, "127.0.0.1"),
            Err(SignUpError::Policy(_))
        ));
        let user = sign_up(&store, &settings, "sam", GOOD, 0, "127.0.0.1").unwrap();
        assert_eq!(
            (user.status, user.role),
            (UserStatus::Pending, Role::Viewer)
        );
        assert!(matches!(
            sign_up(&store, &settings, "sam", GOOD, 0, "127.0.0.1"),
            Err(SignUpError::Taken)
        ));
        assert!(matches!(
            login(&store, &settings, "sam", GOOD, &Client::default(), 10),
            Err(LoginError::Pending)
        ));
        let mut approved = store.user("sam").unwrap().unwrap();
        approved.status = UserStatus::Active;
        store.update_user(&approved).unwrap();
        assert!(login(&store, &settings, "sam", GOOD, &Client::default(), 10).is_ok());
    }

    #[test]
    fn sessions_end_when_idle_old_revoked_or_their_user_is_disabled() {
        let store = MemoryAccounts::default();
        let settings = Settings::default();
        with_user(&store, &settings);
        let open = |at| login(&store, &settings, "alice", GOOD, &Client::default(), at).unwrap();
        let session = open(0);
        assert!(
            session_user(&store, &settings, &session.cookie, 1_000)
                .unwrap()
                .is_some()
        );
        assert!(
            session_user(
                &store,
                &settings,
                &session.cookie,
                1_000 + settings.idle_ms + 1
            )
            .unwrap()
            .is_none()
        );
        let session = open(0);
        let mut at = 0;
        while at < settings.absolute_ms {
            at += settings.idle_ms / 2;
            session_user(&store, &settings, &session.cookie, at).unwrap();
        }
        assert!(
            session_user(&store, &settings, &session.cookie, at + 1)
                .unwrap()
                .is_none()
        );
        let session = open(0);
        assert_eq!(store.delete_sessions_of("alice").unwrap(), 1);
        assert!(
            session_user(&store, &settings, &session.cookie, 10)
                .unwrap()
                .is_none()
        );
        let session = open(0);
        let mut user = store.user("alice").unwrap().unwrap();
        user.status = UserStatus::Disabled;
        store.update_user(&user).unwrap();
        assert!(
            session_user(&store, &settings, &session.cookie, 10)
                .unwrap()
                .is_none()
        );
        assert!(
            session_user(&store, &settings, "garbage", 10)
                .unwrap()
                .is_none()
        );
        assert!(csrf_matches(&session.record, &session.record.csrf.clone()));
        assert!(!csrf_matches(&session.record, ""));
    }
}
