//! Redacting secrets from what is logged or put in an error: a connection URL's password
//! (`redis://:pw@host`, `postgres://user:pw@host/db`, or a `password=` key in a Postgres
//! key-value string) is replaced, everything else kept so the message still says where.

/// What a redacted secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// `url` with its password (the userinfo after `:`, or a `password=` value) replaced by
/// [`REDACTED`]. A URL without one is returned as it is.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest_start = scheme_end + 3;
        let rest = &url[rest_start..];
        let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_len];
        // The userinfo ends at the last '@' of the authority (a password may contain '@').
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if user.len() != userinfo.len() {
                return format!(
                    "{}{user}:{REDACTED}{}",
                    &url[..rest_start],
                    &url[rest_start + at..]
                );
            }
        }
        return url.to_owned();
    }
    // A key-value connection string: `host=db user=app password=secret`.
    url.split(' ')
        .map(|part| match part.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}={REDACTED}"),
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_replaced_and_the_rest_kept() {
        for (url, want) in [
            (
                "redis://:s3cret@127.0.0.1:6379/0",
                "redis://:[redacted]@127.0.0.1:6379/0",
            ),
            ("redis://user:p@ss:w@rd@h:1", "redis://user:[redacted]@h:1"),
            (
                "postgres://app:pw@db/test?sslmode=disable",
                "postgres://app:[redacted]@db/test?sslmode=disable",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("postgres://app@db/test", "postgres://app@db/test"),
            (
                "host=db user=app password=pw dbname=t",
                "host=db user=app password=[redacted] dbname=t",
            ),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }
}
