//! The stamping macros. Each suite module holds the one list of its checks'
//! names (a hidden `__<suite>_checks!` macro); `checks()` and the stamping
//! macro are both generated from it, so they cannot disagree, and a unit test
//! per suite checks that every `pub async fn` check of the module is listed.

/// Defines a suite's `checks()` from its names, plus unit tests that the list
/// matches the module's source and the stamping macro's list.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_list {
    ($fixture:ident, $file:literal, $names_macro:ident, [$($name:ident),* $(,)?]) => {
        /// Every check of this suite, in a fixed order.
        pub fn checks() -> Vec<$crate::Check<$crate::$fixture>> {
            vec![$($crate::Check {
                name: stringify!($name),
                run: |f: &$crate::$fixture| -> ::futures::future::BoxFuture<'_, $crate::CheckResult> {
                    Box::pin($name(f))
                },
            }),*]
        }

        #[cfg(test)]
        mod list_tests {
            use super::*;

            #[test]
            fn every_check_is_listed_once() {
                let listed: Vec<&str> = checks().iter().map(|c| c.name).collect();
                let mut unique = listed.clone();
                unique.sort_unstable();
                unique.dedup();
                assert_eq!(unique.len(), listed.len(), "a check is listed twice");
                // Every `pub async fn x(..: &XFixture) -> CheckResult` of
                // the module must be listed, or no backend would ever run it.
                // Signatures may be wrapped over several lines by rustfmt.
                let defined = $crate::__defined_checks(include_str!($file), stringify!($fixture));
                for name in &defined {
                    assert!(listed.contains(name), "check `{name}` is defined but not listed");
                }
                assert_eq!(defined.len(), listed.len(), "defined {defined:?}, listed {listed:?}");
            }

            #[test]
            fn stamping_macro_stamps_every_check() {
                let stamped: Vec<&str> = $crate::$names_macro!(__stamped_names!());
                let listed: Vec<&str> = checks().iter().map(|c| c.name).collect();
                assert_eq!(stamped, listed);
            }
        }
    };
}

/// The names of the checks defined in a suite's source: every
/// `pub async fn NAME(` whose signature (up to its body's `{`, however
/// rustfmt wrapped it) takes a `&FIXTURE` and returns `CheckResult`.
#[doc(hidden)]
pub fn __defined_checks<'a>(source: &'a str, fixture: &str) -> Vec<&'a str> {
    let needle = "pub async fn ";
    let fixture_ref = format!("&{fixture}");
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(needle) {
        let after = &rest[at + needle.len()..];
        rest = after;
        let Some(open) = after.find('(') else { break };
        let name = after[..open].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let signature: String = after[open..after.find('{').unwrap_or(after.len())].split_whitespace().collect();
        if signature.contains(&fixture_ref) && signature.contains("->CheckResult") {
            out.push(name);
        }
    }
    out
}

/// The names a stamping macro would stamp (for the unit tests).
#[doc(hidden)]
#[macro_export]
macro_rules! __stamped_names {
    ([$($name:ident),* $(,)?]) => {
        vec![$(stringify!($name)),*]
    };
}

/// Stamps one `#[test]` per check name into a module `$module`.
#[doc(hidden)]
#[macro_export]
macro_rules! __stamp {
    ($module:ident, $suite:ident, $fixture:path, $skips:tt [$($name:ident),* $(,)?]) => {
        #[allow(non_snake_case)]
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            // Every name in the skip list must be a check of the suite: a
            // typo is a compile error, not a silently running check.
            #[allow(dead_code)]
            fn skip_list_names_are_checks() {
                $crate::__skip_names_exist!($suite, $skips);
            }

            $(
                #[test]
                fn $name() {
                    $crate::__run_stamped(
                        stringify!($module),
                        stringify!($name),
                        $crate::__skip_names!($skips),
                        $crate::$suite::checks(),
                        || $fixture(),
                    );
                }
            )*
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __skip_names_exist {
    ($suite:ident, [$($skip:ident),* $(,)?]) => {
        $(let _ = $crate::$suite::$skip;)*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __skip_names {
    ([$($skip:ident),* $(,)?]) => {
        &[$(stringify!($skip)),*]
    };
}

/// Stamps the [`memory`](crate::memory) suite: one `#[test]` per check, in a
/// module `memory_store`, each calling `$fixture().await` (an
/// `async fn() -> Option<MemoryFixture>`; `None` skips).
///
/// `memory_store_tests!(fixture, skip = [check_a, check_b])` skips the named
/// checks (loudly) for a backend that cannot do them; the names are checked
/// at compile time.
#[macro_export]
macro_rules! memory_store_tests {
    ($fixture:path $(,)?) => {
        $crate::memory_store_tests!($fixture, skip = []);
    };
    ($fixture:path, skip = [$($skip:ident),* $(,)?] $(,)?) => {
        $crate::__memory_checks!(__stamp!(memory_store, memory, $fixture, [$($skip),*]));
    };
}

/// Stamps the [`session`](crate::session) suite into a module
/// `session_store`; see [`memory_store_tests!`] for the forms.
#[macro_export]
macro_rules! session_store_tests {
    ($fixture:path $(,)?) => {
        $crate::session_store_tests!($fixture, skip = []);
    };
    ($fixture:path, skip = [$($skip:ident),* $(,)?] $(,)?) => {
        $crate::__session_checks!(__stamp!(session_store, session, $fixture, [$($skip),*]));
    };
}

/// Stamps the [`ratelimit`](crate::ratelimit) suite into a module
/// `rate_limiter`; see [`memory_store_tests!`] for the forms.
#[macro_export]
macro_rules! rate_limiter_tests {
    ($fixture:path $(,)?) => {
        $crate::rate_limiter_tests!($fixture, skip = []);
    };
    ($fixture:path, skip = [$($skip:ident),* $(,)?] $(,)?) => {
        $crate::__ratelimit_checks!(__stamp!(rate_limiter, ratelimit, $fixture, [$($skip),*]));
    };
}

/// Stamps the [`vector`](crate::vector) suite into a module `vector_index`;
/// see [`memory_store_tests!`] for the forms.
#[macro_export]
macro_rules! vector_index_tests {
    ($fixture:path $(,)?) => {
        $crate::vector_index_tests!($fixture, skip = []);
    };
    ($fixture:path, skip = [$($skip:ident),* $(,)?] $(,)?) => {
        $crate::__vector_checks!(__stamp!(vector_index, vector, $fixture, [$($skip),*]));
    };
}

#[cfg(test)]
mod tests {
    use super::__defined_checks;

    #[test]
    fn defined_checks_tolerate_wrapped_signatures() {
        let source = r#"
pub async fn one_line(f: &VectorFixture) -> CheckResult {
    Ok(())
}
  pub async fn indented(fixture: &VectorFixture) -> CheckResult { Ok(()) }
pub async fn wrapped_by_rustfmt(
    f: &VectorFixture,
) -> CheckResult {
    Ok(())
}
pub async fn return_wrapped(f: &VectorFixture)
    -> CheckResult
{
    Ok(())
}
pub async fn helper(f: &VectorFixture) -> Result<u32, String> { Ok(1) }
pub async fn other_fixture(f: &MemoryFixture) -> CheckResult { Ok(()) }
async fn private(f: &VectorFixture) -> CheckResult { Ok(()) }
pub fn not_async(f: &VectorFixture) -> CheckResult { Ok(()) }
"#;
        assert_eq!(
            __defined_checks(source, "VectorFixture"),
            vec!["one_line", "indented", "wrapped_by_rustfmt", "return_wrapped"]
        );
        assert_eq!(__defined_checks(source, "MemoryFixture"), vec!["other_fixture"]);
    }
}
