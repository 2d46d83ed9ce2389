//! Connection strings as they may be printed ([`redact_url`]) and parse
//! errors that quote nothing of them ([`parse_url`]).

use std::error::Error as _;
use std::fmt::Write as _;
use std::str::FromStr;

use selfrag_core::{Error, Result};
use tokio_postgres::config::Host;
use tokio_postgres::Config;

use crate::tls::{PgTls, RootCerts, SslMode};

/// What [`redact_url`] prints for a string [`parse_url`] refuses.
const UNPARSEABLE: &str = "<redacted: not a valid Postgres URL or connection string>";

/// The URL prefixes the driver reads as URLs (anything else is a
/// `key=value` string to it).
const URL_PREFIXES: [&str; 2] = ["postgres://", "postgresql://"];

/// A connection string as it may be printed: never its password.
///
/// `url` is parsed the way the driver parses it
/// (`tokio_postgres::Config`), and printed again from the parsed settings
/// only: user, hosts, ports, database and (when not the default) `sslmode`,
/// with `***` where the password is. Nothing else of the string is copied,
/// so `?password=`, `password = 'a b\' c'` and parameters this function does
/// not know about never appear. A URL stays a URL
/// (`postgres://app:***@db:5432/app`), a `key=value` string stays one
/// (`host=db port=5432 user=app password=*** dbname=app`).
///
/// A string [`parse_url`] refuses gives a fixed placeholder: one the driver
/// cannot parse, and the URLs it would misread so that part of a password
/// lands in the user, host or database name (see [`parse_url`]).
pub fn redact_url(url: &str) -> String {
    let Ok((config, tls)) = parse_url_with_tls(url) else {
        return UNPARSEABLE.to_owned();
    };
    match URL_PREFIXES.iter().find(|p| url.starts_with(*p)) {
        Some(prefix) => url_form(prefix, &config, &tls),
        None => key_value_form(&config, &tls),
    }
}

/// The TLS options of `tls` as `(keyword, value)` pairs, for printing:
/// file paths only, never their contents.
fn tls_params(tls: &PgTls) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(mode) = tls.mode {
        out.push(("sslmode", mode.as_str().to_owned()));
    }
    match &tls.root_cert {
        Some(RootCerts::System) => out.push(("sslrootcert", "system".to_owned())),
        Some(RootCerts::File(p)) => out.push(("sslrootcert", p.display().to_string())),
        None => {}
    }
    if let Some(p) = &tls.client_cert {
        out.push(("sslcert", p.display().to_string()));
    }
    if let Some(p) = &tls.client_key {
        out.push(("sslkey", p.display().to_string()));
    }
    out
}

/// `prefix[user[:***]@]host:port[,host:port...][/dbname][?host=/socket&sslmode=...]`.
fn url_form(prefix: &str, config: &Config, tls: &PgTls) -> String {
    let mut out = prefix.to_owned();
    let user = config.get_user().unwrap_or_default();
    if !user.is_empty() || config.get_password().is_some() {
        out.push_str(&encode(user));
        if config.get_password().is_some() {
            out.push_str(":***");
        }
        out.push('@');
    }
    let ports = config.get_ports();
    let port_of = |i: usize| ports.get(i).or(if ports.len() == 1 { ports.first() } else { None });
    let mut tcp = Vec::new();
    let mut sockets = Vec::new();
    for (i, host) in config.get_hosts().iter().enumerate() {
        match host {
            Host::Tcp(name) => {
                let mut h = if name.contains(':') { format!("[{name}]") } else { encode(name) };
                if let Some(port) = port_of(i) {
                    let _ = write!(h, ":{port}");
                }
                tcp.push(h);
            }
            #[cfg(unix)]
            Host::Unix(path) => sockets.push(path.display().to_string()),
        }
    }
    out.push_str(&tcp.join(","));
    if let Some(db) = config.get_dbname() {
        out.push('/');
        out.push_str(&encode(db));
    }
    let mut params: Vec<String> = sockets.iter().map(|s| format!("host={}", encode(s))).collect();
    if !sockets.is_empty() && tcp.is_empty() {
        if let Some(port) = ports.first() {
            params.push(format!("port={port}"));
        }
    }
    for (key, value) in tls_params(tls) {
        params.push(format!("{key}={}", encode(&value)));
    }
    if !params.is_empty() {
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// `host=... port=... user=... password=*** dbname=... [sslmode=...]`.
fn key_value_form(config: &Config, tls: &PgTls) -> String {
    let mut parts = Vec::new();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        parts.push(format!("host={}", quote(&hosts.join(","))));
    }
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    if !ports.is_empty() {
        parts.push(format!("port={}", ports.join(",")));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={}", quote(user)));
    }
    if config.get_password().is_some() {
        parts.push("password=***".to_owned());
    }
    if let Some(db) = config.get_dbname() {
        parts.push(format!("dbname={}", quote(db)));
    }
    for (key, value) in tls_params(tls) {
        parts.push(format!("{key}={}", quote(&value)));
    }
    parts.join(" ")
}

/// Percent-encodes what would change how a URL part reads back.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '@' | ':' | '/' | '?' | '&' | '=' | ',' | '%' | '#' | '[' | ']') || c.is_whitespace() {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `key=value` value, single-quoted (with `'` and `\` escaped) when it
/// is empty or holds anything but plain characters.
fn quote(value: &str) -> String {
    if !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || matches!(c, '\'' | '\\' | '=')) {
        return value.to_owned();
    }
    let mut out = String::from("'");
    for c in value.chars() {
        if matches!(c, '\'' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Parses a Postgres URL or `key=value` connection string, as
/// `tokio_postgres::Config` does, but with libpq's TLS options (see
/// [`parse_url_with_tls`], whose TLS settings this drops after setting the
/// driver's `sslmode` from them), refusing the URLs the driver would
/// misread with part of a password outside the password:
///
/// - an `@` after the first one and before the query
///   (`postgres://u:p@ss@host/db`): the driver ends the userinfo at the
///   first `@`, so it would connect to host `ss@host`, a name that cannot
///   resolve, and print it;
/// - a user name holding a `/` or `?` (`postgres://host/db?password=a@b`):
///   the driver takes everything up to the `@` as the userinfo.
///
/// Neither could ever connect as meant; percent-encoding the `@` (`%40`)
/// fixes both. An `@` in a query value (`?application_name=a@b`) and a
/// password holding an unencoded `/` or `?` (which the driver reads right)
/// are accepted.
///
/// # Errors
/// [`Error::InvalidInput`] (`url`) when it does not parse or is refused as
/// above. The message says what is wrong without quoting the string: the
/// driver's own message can hold a piece of a password (for
/// `password=a b c=d`, whose unquoted space makes `c` an "unknown option"),
/// so an option name is named only when it is one libpq knows.
/// [`Error::InvalidInput`] naming `sslmode`, `sslrootcert`, `sslcert` or
/// `sslkey` for a bad TLS option (see [`parse_url_with_tls`]).
pub fn parse_url(url: &str) -> Result<Config> {
    parse_url_with_tls(url).map(|(config, _)| config)
}

/// Parses a Postgres URL or `key=value` connection string into the
/// driver's settings and the TLS options the driver does not read itself:
/// `sslmode` (all five values, `verify-ca` and `verify-full` included),
/// `sslrootcert`, `sslcert` and `sslkey` are taken out of the string before
/// the driver parses the rest, and come back as a [`PgTls`]; the returned
/// `Config`'s own `sslmode` is set from them (`require` for the verifying
/// modes; the connector does the checking).
///
/// ```
/// use selfrag_postgres::{parse_url_with_tls, RootCerts, SslMode};
/// let (config, tls) =
///     parse_url_with_tls("postgres://app@db:5432/app?sslmode=verify-full&sslrootcert=/etc/ca.crt").unwrap();
/// assert_eq!(config.get_dbname(), Some("app"));
/// assert_eq!(tls.mode, Some(SslMode::VerifyFull));
/// assert_eq!(tls.root_cert, Some(RootCerts::File("/etc/ca.crt".into())));
/// ```
///
/// # Errors
/// As [`parse_url`]; [`Error::InvalidInput`] naming `sslmode` (an unknown
/// value or `allow`; the value is not quoted), `sslrootcert`, `sslcert` or
/// `sslkey` (empty), or `url` (a TLS option that is not UTF-8 once
/// percent-decoded).
pub fn parse_url_with_tls(url: &str) -> Result<(Config, PgTls)> {
    let (rest, tls) = split_tls(url)?;
    let mut config = Config::from_str(&rest).map_err(|e| {
        Error::invalid("url", format!("not a Postgres URL or connection string: {}", safe_parse_error(&e)))
    })?;
    if let Some(prefix) = URL_PREFIXES.iter().find(|p| url.starts_with(*p)) {
        let rest = &url[prefix.len()..];
        if let Some(at) = rest.find('@') {
            let after = &rest[at + 1..];
            if after[..after.find('?').unwrap_or(after.len())].contains('@') {
                return Err(Error::invalid(
                    "url",
                    "holds an `@` after the user and password and before the query: percent-encode an `@` \
                     in the password as %40",
                ));
            }
            let user = rest[..at].split(':').next().unwrap_or_default();
            if user.contains(['/', '?']) {
                return Err(Error::invalid(
                    "url",
                    "its user name would hold a `/` or `?`: an `@` in the path or query must be \
                     percent-encoded as %40",
                ));
            }
        }
    }
    tls.apply_to(&mut config);
    Ok((config, tls))
}

/// A connection string less its TLS options, and those options as decoded
/// `(keyword, value)` pairs in order.
type Split<'a> = (std::borrow::Cow<'a, str>, Vec<(String, String)>);

/// The libpq TLS options this crate reads itself.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Takes the TLS options out of `url`: the rest (byte for byte, less those
/// parameters) and the settings they make. A later occurrence of an option
/// wins, as in libpq. A string that does not tokenize is returned whole, for
/// the driver to report.
fn split_tls(url: &str) -> Result<(std::borrow::Cow<'_, str>, PgTls)> {
    let (rest, pairs) = match URL_PREFIXES.iter().find(|p| url.starts_with(*p)) {
        Some(prefix) => split_url_query(url, prefix.len())?,
        None => match split_key_values(url) {
            Some(split) => split,
            None => return Ok((url.into(), PgTls::default())),
        },
    };
    let mut tls = PgTls::default();
    for (key, value) in pairs {
        let field = TLS_KEYS.iter().copied().find(|k| *k == key).expect("only TLS keys are split off");
        if value.is_empty() {
            return Err(Error::invalid(field, "is empty"));
        }
        match field {
            "sslmode" => tls.mode = Some(value.parse::<SslMode>()?),
            "sslrootcert" if value == "system" => tls.root_cert = Some(RootCerts::System),
            "sslrootcert" => tls.root_cert = Some(RootCerts::File(value.into())),
            "sslcert" => tls.client_cert = Some(value.into()),
            _ => tls.client_key = Some(value.into()),
        }
    }
    Ok((rest, tls))
}

/// URL form: the query starts at the first `?` after the userinfo (the
/// driver ends the userinfo at the first `@`), parameters are `&`-separated
/// `key=value` with percent-encoded keys and values.
fn split_url_query(url: &str, prefix_len: usize) -> Result<Split<'_>> {
    let after_prefix = &url[prefix_len..];
    let from = prefix_len + after_prefix.find('@').map_or(0, |at| at + 1);
    let Some(q) = url[from..].find('?').map(|q| from + q) else {
        return Ok((url.into(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut pairs = Vec::new();
    for param in url[q + 1..].split('&') {
        let key = param.split('=').next().unwrap_or_default();
        match percent_decode(key) {
            Some(key) if TLS_KEYS.contains(&key.as_str()) => {
                let value = param.split_once('=').map(|(_, v)| v).unwrap_or_default();
                let value = percent_decode(value)
                    .ok_or_else(|| Error::invalid("url", format!("the value of `{key}` is not UTF-8 once decoded")))?;
                pairs.push((key, value));
            }
            _ => kept.push(param),
        }
    }
    if pairs.is_empty() {
        return Ok((url.into(), pairs));
    }
    let mut rest = url[..q].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest.into(), pairs))
}

/// `%XX`-decodes `s` (as the driver does: no `+` for space); `None` when
/// the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(u8::try_from(h * 16 + l).unwrap_or_default());
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `key=value` form, tokenized as the driver does (whitespace around `=`,
/// values single-quoted or not, `\` escapes): the string less the TLS
/// parameters, and those parameters. `None` when it does not tokenize.
fn split_key_values(s: &str) -> Option<Split<'_>> {
    let mut it = s.char_indices().peekable();
    let mut kept = String::new();
    let mut pairs = Vec::new();
    let mut last = 0;
    loop {
        while it.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
            it.next();
        }
        let Some(&(start, _)) = it.peek() else { break };
        let mut key_end = start;
        while let Some(&(i, c)) = it.peek() {
            if c.is_whitespace() || c == '=' {
                break;
            }
            key_end = i + c.len_utf8();
            it.next();
        }
        let key = &s[start..key_end];
        if key.is_empty() {
            return None;
        }
        while it.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
            it.next();
        }
        if it.next().map(|(_, c)| c) != Some('=') {
            return None;
        }
        while it.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
            it.next();
        }
        let mut value = String::new();
        let end;
        if it.peek().is_some_and(|&(_, c)| c == '\'') {
            it.next();
            loop {
                match it.next() {
                    Some((i, '\'')) => {
                        end = i + 1;
                        break;
                    }
                    Some((_, '\\')) => value.push(it.next()?.1),
                    Some((_, c)) => value.push(c),
                    None => return None,
                }
            }
        } else {
            let mut e = None;
            while let Some(&(i, c)) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                it.next();
                if c == '\\' {
                    if let Some((j, c2)) = it.next() {
                        value.push(c2);
                        e = Some(j + c2.len_utf8());
                    } else {
                        e = Some(i + 1);
                    }
                } else {
                    value.push(c);
                    e = Some(i + c.len_utf8());
                }
            }
            end = e?;
        }
        if TLS_KEYS.contains(&key) {
            kept.push_str(&s[last..start]);
            last = end;
            pairs.push((key.to_owned(), value));
        }
    }
    if pairs.is_empty() {
        return Some((s.into(), pairs));
    }
    kept.push_str(&s[last..]);
    Some((kept.into(), pairs))
}

/// The connection keywords libpq documents: an "unknown option" error may
/// name one of these (the driver does not support them all), and only these.
const LIBPQ_KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "require_auth",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "requiressl",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
];

/// The driver's parse error, kept only where it cannot quote the string.
fn safe_parse_error(e: &tokio_postgres::Error) -> String {
    let cause = e.source().map(ToString::to_string).unwrap_or_default();
    if cause.starts_with("invalid value for option `") {
        // Names the option, a fixed string of the driver.
        return cause;
    }
    if let Some(name) = cause.strip_prefix("unknown option `").and_then(|r| r.strip_suffix('`')) {
        return if LIBPQ_KEYWORDS.contains(&name) {
            format!("option `{name}` is not supported by this driver")
        } else {
            "an unknown option (name not shown: it may be part of a value; quote values holding spaces, \
             key='a b')"
                .to_owned()
        };
    }
    const FIXED: [&str; 4] =
        ["unexpected EOF", "unterminated quoted connection parameter value", "unterminated parameter", "invalid utf-8"];
    if let Some(fixed) = FIXED.iter().find(|f| cause.starts_with(**f)) {
        return (*fixed).to_owned();
    }
    if cause.starts_with("unexpected character") {
        return "unexpected character (quote values holding spaces, key='a b')".to_owned();
    }
    "it does not parse".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_shape_without_the_password() {
        assert_eq!(redact_url("postgres://u:p@h/d"), "postgres://u:***@h:5432/d");
        assert_eq!(redact_url("postgresql://u@h:5433/d"), "postgresql://u@h:5433/d");
        assert_eq!(redact_url("postgres://h1:1,h2:2/d?password=pw"), "postgres://:***@h1:1,h2:2/d");
        assert_eq!(
            redact_url("postgres://u:p%40ss@[::1]:6/d?sslmode=require&application_name=x"),
            "postgres://u:***@[::1]:6/d?sslmode=require"
        );
        assert_eq!(redact_url("postgres://u@%2Fvar%2Frun%2Fpg/d"), "postgres://u@/d?host=%2Fvar%2Frun%2Fpg&port=5432");
        assert_eq!(redact_url("host=h password=p user=u dbname=d"), "host=h user=u password=*** dbname=d");
        assert_eq!(redact_url("host = h  password = 'a b\\' c'  user='x y'"), "host=h user='x y' password=***");
        assert_eq!(redact_url(r"host=h password = 'a\\b\' c d' user=u"), "host=h user=u password=***");
        assert_eq!(redact_url(""), "");
    }

    #[test]
    fn misread_or_unparseable_strings_give_a_placeholder() {
        for s in [
            "postgres://u:p@ss@h/d",
            "postgres://u:p@ss@h",
            "postgres://u:p@ss/x@h/d",
            "postgres://h/d?password=a@b",
            "postgres://h/d?password=a:x@b",
            "password=abc def=ghi",
            "postgres://u:pw@h:notaport/d",
            "password='unterminated",
            "sslpassword=x",
        ] {
            assert_eq!(redact_url(s), UNPARSEABLE, "{s}");
            assert_eq!(parse_url(s).unwrap_err().field(), Some("url"), "{s}");
        }
    }

    /// What the driver reads right stays accepted.
    #[test]
    fn urls_the_driver_reads_right_are_accepted() {
        let pw = |s: &str| parse_url(s).unwrap().get_password().map(|p| String::from_utf8_lossy(p).into_owned());
        assert_eq!(pw("postgres://u:p%40ss@h/d").as_deref(), Some("p@ss"));
        assert_eq!(pw("postgres://u:pa/ss@h/d").as_deref(), Some("pa/ss"));
        assert_eq!(pw("postgres://u:pa?ss@h/d").as_deref(), Some("pa?ss"));
        assert_eq!(redact_url("postgres://u:pa/ss@h/d"), "postgres://u:***@h:5432/d");
        let c = parse_url("postgres://u:pw@h/d?application_name=me@corp").unwrap();
        assert_eq!((c.get_application_name(), c.get_dbname()), (Some("me@corp"), Some("d")));
        assert_eq!(redact_url("postgres://u:pw@h/d?application_name=me@corp"), "postgres://u:***@h:5432/d");
    }

    #[test]
    fn parse_errors_quote_nothing_of_the_string() {
        let msg = |s: &str| parse_url(s).unwrap_err().to_string();
        let m = msg("password=abc secretpart=ghi");
        assert!(!m.contains("secretpart") && m.contains("unknown option"), "{m}");
        assert!(msg("sslpassword=zz").contains("`sslpassword` is not supported"));
        let m = msg("password=abc qq rr");
        assert!(!m.contains("qq") && !m.contains("rr") && m.contains("unexpected character"), "{m}");
        assert!(msg("postgres://u:pw@h:notaport/d").contains("invalid value for option `port`"));
        assert_eq!(parse_url("password=x y").unwrap_err().field(), Some("url"));
        assert_eq!(parse_url("postgres://u:pw@h/d").unwrap().get_dbname(), Some("d"));
    }

    #[test]
    fn tls_options_are_read_and_taken_out() {
        use tokio_postgres::config::SslMode as DriverMode;
        let url = "postgres://u:pa?ss@h/d?application_name=a&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.crt\
                   &sslcert=/c.crt&sslkey=/c.key";
        let (c, tls) = parse_url_with_tls(url).unwrap();
        assert_eq!(c.get_password(), Some(&b"pa?ss"[..]));
        assert_eq!((c.get_application_name(), c.get_dbname()), (Some("a"), Some("d")));
        assert_eq!(c.get_ssl_mode(), DriverMode::Require);
        assert_eq!(tls.mode, Some(SslMode::VerifyFull));
        assert_eq!(tls.root_cert, Some(RootCerts::File("/etc/ca.crt".into())));
        assert_eq!(tls.client_cert.as_deref(), Some(std::path::Path::new("/c.crt")));
        assert_eq!(tls.client_key.as_deref(), Some(std::path::Path::new("/c.key")));
        assert_eq!(
            redact_url(url),
            "postgres://u:***@h:5432/d?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.crt&sslcert=%2Fc.crt&sslkey=%2Fc.key"
        );

        let kv = r"host=h sslmode = 'verify-ca' password='a b\' c' sslrootcert=system user=u sslkey=/k\ x";
        let (c, tls) = parse_url_with_tls(kv).unwrap();
        assert_eq!((c.get_user(), c.get_password()), (Some("u"), Some(&b"a b' c"[..])));
        assert_eq!((tls.mode, tls.root_cert), (Some(SslMode::VerifyCa), Some(RootCerts::System)));
        assert_eq!(tls.client_key.as_deref(), Some(std::path::Path::new("/k x")));
        assert_eq!(redact_url(kv), "host=h user=u password=*** sslmode=verify-ca sslrootcert=system sslkey='/k x'");

        // The last occurrence wins, as in libpq; plain modes reach the driver.
        let (c, tls) = parse_url_with_tls("postgres://h/d?sslmode=require&sslmode=disable").unwrap();
        assert_eq!((c.get_ssl_mode(), tls.mode), (DriverMode::Disable, Some(SslMode::Disable)));
        assert_eq!(parse_url("postgres://h/d").unwrap().get_ssl_mode(), DriverMode::Prefer);
        // No TLS over a Unix-domain socket, whatever the mode (as libpq).
        let c = parse_url("postgres://u@%2Fvar%2Frun%2Fpg/d?sslmode=verify-full").unwrap();
        assert_eq!(c.get_ssl_mode(), DriverMode::Disable);
        let c = parse_url("host=/run/pg sslmode=require").unwrap();
        assert_eq!(c.get_ssl_mode(), DriverMode::Disable);
    }

    #[test]
    fn bad_tls_options_name_their_field() {
        let field = |s: &str| parse_url(s).unwrap_err().field().map(str::to_owned);
        assert_eq!(field("postgres://h/d?sslmode=allow"), Some("sslmode".to_owned()));
        assert_eq!(field("postgres://h/d?sslmode=verify_full"), Some("sslmode".to_owned()));
        assert_eq!(field("sslmode=bogus"), Some("sslmode".to_owned()));
        assert_eq!(field("postgres://h/d?sslrootcert="), Some("sslrootcert".to_owned()));
        assert_eq!(field("host=h sslcert=''"), Some("sslcert".to_owned()));
        assert_eq!(field("postgres://h/d?sslkey=%FF"), Some("url".to_owned()));
        assert!(!parse_url("sslmode=s3cretish").unwrap_err().to_string().contains("s3cretish"));
        // Still not supported: an encrypted key's password.
        assert!(parse_url("postgres://h/d?sslpassword=x").is_err());
    }
}
