//! The secrets of the configuration, kept out of everything the tool
//! prints.
//!
//! The libraries never print a password or key: their `Debug` and errors
//! go through each backend's `redact_url`, and no error quotes a URL. This
//! is a second net under that: every password and key the tool was given
//! is collected before the command line is parsed, and replaced by `***` in
//! every line the tool writes (human or JSON, stdout or stderr), so that a
//! message built by a server or driver from one of them cannot show it
//! either.

use std::borrow::Cow;
use std::sync::OnceLock;

use selfrag_redis::deadpool_redis::redis::IntoConnectionInfo;

/// Secrets shorter than this are not replaced: a password of one to three
/// characters would turn every such substring of the output into `***`.
/// (They are still never printed by the libraries.)
const MIN_LEN: usize = 4;

static SECRETS: OnceLock<Vec<String>> = OnceLock::new();

/// The settings that hold URLs (which may carry a password) and keys, as
/// environment variables and flags.
const URL_VARS: [(&str, &str); 4] = [
    ("DATABASE_URL", "--database-url"),
    ("REDIS_URL", "--redis-url"),
    ("QDRANT_URL", "--qdrant-url"),
    ("QDRANT_REST_URL", "--qdrant-rest-url"),
];
const KEY_VARS: [(&str, &str); 1] = [("QDRANT_API_KEY", "--qdrant-api-key")];

/// Collects the secrets from the environment and the command line (before
/// clap parses it, so its usage errors are covered too). Call once, first.
pub(crate) fn collect() {
    let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    let mut found = Vec::new();
    for (urls, (var, flag)) in URL_VARS.iter().map(|v| (true, v)).chain(KEY_VARS.iter().map(|v| (false, v))) {
        let values = std::env::var(var).ok().into_iter().chain(flag_values(&args, flag));
        for value in values {
            if urls {
                found.extend(url_secrets(&value));
                // `REDIS_URL` may list Redis Cluster seeds: each URL alone too.
                if value.contains(',') {
                    found.extend(value.split(',').flat_map(url_secrets));
                }
            } else {
                found.push(value.trim().to_owned());
            }
        }
    }
    let _ = SECRETS.set(prepare(found));
}

/// The values given to `flag` as `--flag value` or `--flag=value`.
fn flag_values<'a>(args: &'a [String], flag: &'a str) -> impl Iterator<Item = String> + 'a {
    args.iter().enumerate().filter_map(move |(i, arg)| {
        if arg == flag {
            args.get(i + 1).cloned()
        } else {
            arg.strip_prefix(flag).and_then(|rest| rest.strip_prefix('=')).map(str::to_owned)
        }
    })
}

/// Every reading of a password in `url`: as the Postgres and Redis drivers
/// parse it, and the widest one (userinfo up to the last `@`), plus the
/// values of query parameters whose name says secret.
pub(crate) fn url_secrets(url: &str) -> Vec<String> {
    let url = url.trim();
    let mut found = Vec::new();
    if let Ok(config) = selfrag_postgres::parse_url(url) {
        if let Some(pw) = config.get_password() {
            found.push(String::from_utf8_lossy(pw).into_owned());
        }
    }
    if let Ok(info) = url.into_connection_info() {
        found.extend(info.redis.password);
    }
    if let Some((_, rest)) = url.split_once("://") {
        if let Some(at) = rest.rfind('@') {
            if let Some((_, password)) = rest[..at].split_once(':') {
                found.push(password.to_owned());
                found.extend(percent_decode(password));
            }
        }
        if let Some((_, query)) = rest.split_once('?') {
            for pair in query.split('&') {
                if let Some((key, value)) = pair.split_once('=') {
                    let key = key.to_ascii_lowercase();
                    if ["pass", "key", "token", "secret", "auth", "cred"].iter().any(|s| key.contains(s)) {
                        found.push(value.to_owned());
                        found.extend(percent_decode(value));
                    }
                }
            }
        }
    }
    found
}

/// `%XX` sequences decoded, when there are any and the result is UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return None;
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Long enough ones, with their JSON-escaped forms (JSON output escapes
/// `"` and `\`), longest first so that a secret containing another is
/// replaced whole.
fn prepare(found: Vec<String>) -> Vec<String> {
    let mut secrets: Vec<String> = Vec::new();
    for s in found.into_iter().filter(|s| s.chars().count() >= MIN_LEN) {
        if let Ok(json) = serde_json::to_string(&s) {
            let json = json[1..json.len() - 1].to_owned();
            if json != s {
                secrets.push(json);
            }
        }
        secrets.push(s);
    }
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    secrets
}

/// `text` with every collected secret replaced by `***`, and with the
/// password of any URL and the value of any `password=`-like pair in it
/// (clap quotes a misplaced argument whole, whatever it holds).
pub(crate) fn scrub(text: &str) -> Cow<'_, str> {
    let known = scrub_with(text, SECRETS.get().map(Vec::as_slice).unwrap_or_default());
    match scrub_patterns(&known) {
        Some(cleaned) => Cow::Owned(cleaned),
        None => known,
    }
}

/// Characters that end a word of the output (clap quotes arguments with
/// `'`, JSON strings end with `"`).
fn ends_word(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\'' | '"' | '`')
}

/// Masks, in every word holding `://`, what lies between the first `:` of
/// the userinfo and its last `@`; and in every word `key=value` whose key
/// says secret, the value. `None` when there was nothing to mask.
fn scrub_patterns(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut rest = text;
    while !rest.is_empty() {
        let start = rest.find(|c: char| !ends_word(c)).unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(ends_word).unwrap_or(rest.len());
        let word = &rest[..end];
        rest = &rest[end..];
        match mask_word(word) {
            Some(masked) => {
                out.push_str(&masked);
                changed = true;
            }
            None => out.push_str(word),
        }
    }
    changed.then_some(out)
}

fn mask_word(word: &str) -> Option<String> {
    if let Some(scheme_end) = word.find("://") {
        let after = scheme_end + 3;
        let at = word[after..].rfind('@')? + after;
        let colon = word[after..at].find(':')? + after;
        return Some(format!("{}***{}", &word[..=colon], &word[at..]));
    }
    let (key, value) = word.split_once('=')?;
    let lower = key.to_ascii_lowercase();
    let secret = ["pass", "secret", "token", "key", "auth", "cred"].iter().any(|s| lower.contains(s));
    (secret && !value.is_empty() && value != "***").then(|| format!("{key}=***"))
}

fn scrub_with<'a>(text: &'a str, secrets: &[String]) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(text);
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), "***"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reading_of_a_url_password_is_found() {
        let has = |url: &str, pw: &str| url_secrets(url).iter().any(|s| s == pw);
        assert!(has("postgres://u:s3cret@h/d", "s3cret"));
        assert!(has("postgres://u:p@ss@h/d", "p@ss"), "the widest reading");
        assert!(has("postgres://u:p%40ss@h/d", "p@ss"), "decoded");
        assert!(has("postgres://h/d?password=s3cret", "s3cret"));
        assert!(has("host=h password='a b c' user=u", "a b c"));
        assert!(has("redis://:s3cret@h:6379", "s3cret"));
        assert!(has("redis+unix:///tmp/r.sock?pass=s3cret", "s3cret"));
        assert!(has("http://h:6334/?api-key=s3cret", "s3cret"));
        assert!(has("rediss://:s3cret@h2:6380", "s3cret"), "one seed of a cluster list");
        assert!(url_secrets("postgres://u@h/d").is_empty());
    }

    #[test]
    fn passwords_in_echoed_urls_and_pairs_are_masked() {
        assert_eq!(
            scrub_patterns("unexpected argument 'postgres://u:pa@ss@h/d' found").as_deref(),
            Some("unexpected argument 'postgres://u:***@h/d' found")
        );
        assert_eq!(scrub_patterns("'host=h password=x1 user=u'").as_deref(), Some("'host=h password=*** user=u'"));
        assert_eq!(scrub_patterns("\"redis://:pw@h\", api_key=k"), Some("\"redis://:***@h\", api_key=***".into()));
        assert_eq!(scrub_patterns("postgres://u@h/d, http://h:6334/, a=b, password=***"), None);
    }

    #[test]
    fn scrubbing_replaces_longest_first_and_skips_short_ones() {
        let secrets = prepare(vec!["abcd".into(), "abcdef".into(), "ab".into(), "q\"uote".into()]);
        assert_eq!(scrub_with("x abcdef y abcd z ab", &secrets), "x *** y *** z ab");
        assert_eq!(scrub_with(r#"{"e": "q\"uote"}"#, &secrets), r#"{"e": "***"}"#);
        assert_eq!(scrub_with("nothing here", &secrets), "nothing here");
    }
}
