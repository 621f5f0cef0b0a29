//! Claude on AWS Bedrock: SigV4-signed `InvokeModel` / `InvokeModelWithResponseStream`, with
//! event-stream frames transcoded to the Anthropic SSE stream.
//!
//! Bedrock takes the Anthropic Messages body almost as is: the model moves to the path, `stream`
//! is chosen by the operation, the API version becomes `"anthropic_version":"bedrock-2023-05-31"`
//! in the body and beta flags move from the `anthropic-beta` header to `"anthropic_beta"`. The
//! rest of the client's JSON is copied byte for byte. [`Bedrock::prepare`] builds the signed
//! request, [`SseFromEventStream`] turns the streamed reply back into Anthropic SSE, and
//! [`anthropic_error`] turns Bedrock's error replies into Anthropic error bodies.

mod error;
mod stream;

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use http::{Method, Request, Uri};

pub use error::anthropic_error;
pub use stream::SseFromEventStream;

use crate::UpstreamError;
use sluice_core::SecretString;

/// The Messages API version Bedrock speaks, sent in the body.
pub const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// The SigV4 service name of the Bedrock runtime.
const SERVICE: &str = "bedrock";

/// Settings of one Bedrock member.
#[derive(Debug, Clone)]
pub struct BedrockOptions {
    /// The AWS region, e.g. `us-east-1`; part of the default endpoint and of the signature.
    pub region: String,
    /// Base URL override (tests, VPC endpoints); default
    /// `https://bedrock-runtime.{region}.amazonaws.com`.
    pub endpoint: Option<String>,
    /// The access key id (`AKIA…`/`ASIA…`).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: SecretString,
    /// The session token of temporary credentials, sent as `x-amz-security-token`.
    pub session_token: Option<SecretString>,
}

/// One Bedrock member: its endpoint and credentials, ready to sign requests.
#[derive(Clone)]
pub struct Bedrock {
    region: String,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    base_path: String,
    /// The `Host` value, signed and sent: the authority without a default port, as hyper sends it.
    host: HeaderValue,
    credentials: Credentials,
}

impl std::fmt::Debug for Bedrock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bedrock")
            .field("region", &self.region)
            .field("endpoint", &self.authority)
            .finish_non_exhaustive()
    }
}

fn config(msg: impl Into<String>) -> UpstreamError {
    UpstreamError::Config(msg.into())
}

impl Bedrock {
    /// Validates the settings (region, endpoint URL, credentials as header-safe values).
    pub fn new(opts: BedrockOptions) -> Result<Self, UpstreamError> {
        let region_ok = !opts.region.is_empty()
            && opts
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Err(config(format!(
                "bedrock region {:?} is invalid",
                opts.region
            )));
        }
        let endpoint = opts
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://bedrock-runtime.{}.amazonaws.com", opts.region));
        let uri: Uri = endpoint
            .parse()
            .map_err(|e| config(format!("bedrock endpoint: {e}")))?;
        let scheme = uri
            .scheme()
            .cloned()
            .filter(|s| *s == http::uri::Scheme::HTTP || *s == http::uri::Scheme::HTTPS)
            .ok_or_else(|| config("bedrock endpoint must be an http:// or https:// URL"))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| config("bedrock endpoint has no host"))?;
        if authority.as_str().contains('@') {
            return Err(config("bedrock endpoint must not carry credentials"));
        }
        if uri.query().is_some() {
            return Err(config("bedrock endpoint must not have a query"));
        }
        let default_port = match authority.port_u16() {
            None => true,
            Some(443) => scheme == http::uri::Scheme::HTTPS,
            Some(80) => scheme == http::uri::Scheme::HTTP,
            Some(_) => false,
        };
        let host = if default_port {
            authority.host()
        } else {
            authority.as_str()
        };
        let host = HeaderValue::from_str(host).map_err(|_| config("bedrock endpoint host"))?;
        if opts.access_key_id.is_empty() || HeaderValue::from_str(&opts.access_key_id).is_err() {
            return Err(config("bedrock access_key_id is empty or not printable"));
        }
        if opts.secret_access_key.expose().is_empty() {
            return Err(config("bedrock secret_access_key is empty"));
        }
        if let Some(token) = &opts.session_token
            && (token.expose().is_empty() || HeaderValue::from_str(token.expose()).is_err())
        {
            return Err(config(
                "bedrock session_token is empty or not a valid header value",
            ));
        }
        let credentials = Credentials::new(
            opts.access_key_id,
            opts.secret_access_key.expose(),
            opts.session_token.map(|t| t.expose().to_owned()),
            None,
            "sluice",
        );
        Ok(Self {
            region: opts.region,
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            host,
            credentials,
        })
    }

    /// The member's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Build the signed upstream request for a Messages call. `model_id` is already the Bedrock
    /// model id (e.g. `"anthropic.claude-sonnet-4-5-20250929-v1:0"`, or an inference profile
    /// ARN); `stream` is whether the client asked for SSE; `headers` are the client's headers
    /// already stripped of its credentials and hop-by-hop headers; `body` is the client's raw
    /// Anthropic Messages JSON body.
    ///
    /// Of the client's headers only `user-agent` and the mock's `x-mock-*` knobs are sent; the
    /// `anthropic-beta` values go into the body. A body that is not a JSON object is a
    /// [`UpstreamError::Config`] (the caller is expected to have validated it already).
    pub fn prepare(
        &self,
        model_id: &str,
        stream: bool,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Request<Bytes>, UpstreamError> {
        // `.` and `..` would be removed by path normalisation before signing.
        if model_id.is_empty() || model_id == "." || model_id == ".." {
            return Err(config(format!("bedrock model id {model_id:?} is invalid")));
        }
        let betas = beta_values(headers);
        let body = Bytes::from(rewrite_body(body, &betas)?);

        let op = if stream {
            "/invoke-with-response-stream"
        } else {
            "/invoke"
        };
        let mut path =
            String::with_capacity(self.base_path.len() + 7 + 3 * model_id.len() + op.len());
        path.push_str(&self.base_path);
        path.push_str("/model/");
        encode_label(&mut path, model_id);
        path.push_str(op);
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| config(format!("bedrock uri: {e}")))?;

        let accept = if stream {
            "application/vnd.amazon.eventstream"
        } else {
            "application/json"
        };
        let host = self.host.to_str().map_err(|_| config("bedrock host"))?;
        let signed = [
            (HOST.as_str(), host),
            (CONTENT_TYPE.as_str(), "application/json"),
            (ACCEPT.as_str(), accept),
        ];
        let uri_string = uri.to_string();
        let signing = sign_headers(
            &self.credentials,
            &self.region,
            now,
            "POST",
            &uri_string,
            &signed,
            &body,
        )?;

        let mut out = HeaderMap::with_capacity(8 + signing.len());
        out.insert(HOST, self.host.clone());
        out.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        out.insert(ACCEPT, HeaderValue::from_static(accept));
        for (name, value) in headers {
            if name == USER_AGENT || name.as_str().starts_with("x-mock-") {
                out.append(name.clone(), value.clone());
            }
        }
        for (name, value) in signing {
            out.insert(name, value);
        }
        let mut req = Request::new(body);
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        *req.headers_mut() = out;
        Ok(req)
    }
}

/// Signs a request with SigV4 (service `bedrock`) and returns the headers to add:
/// `x-amz-date`, `authorization` and, with a session token, `x-amz-security-token` (the last two
/// marked sensitive). `uri` must be absolute and already percent-encoded; the canonical path is
/// encoded once more, as AWS requires for every service but S3.
fn sign_headers(
    credentials: &Credentials,
    region: &str,
    time: SystemTime,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Vec<(HeaderName, HeaderValue)>, UpstreamError> {
    sign_for(
        credentials,
        region,
        SERVICE,
        time,
        method,
        uri,
        headers,
        body,
    )
}

#[allow(clippy::too_many_arguments)]
fn sign_for(
    credentials: &Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Vec<(HeaderName, HeaderValue)>, UpstreamError> {
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| config(format!("sigv4: {e}")))?
        .into();
    let signable = SignableRequest::new(
        method,
        uri,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| config(format!("sigv4: {e}")))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| config(format!("sigv4: {e}")))?
        .into_parts();
    let (added, _query) = instructions.into_parts();
    added
        .into_iter()
        .map(|h| {
            let name = HeaderName::from_static(h.name());
            let mut value = HeaderValue::from_str(h.value())
                .map_err(|_| config(format!("sigv4: {} is not a header value", h.name())))?;
            // The library marks only the token; the authorization header is as good as a
            // password for the next five minutes.
            value.set_sensitive(h.sensitive() || name == http::header::AUTHORIZATION);
            Ok((name, value))
        })
        .collect()
}

/// Appends `label` percent-encoded as one path segment: everything but RFC 3986 unreserved
/// characters, so `:` (model ids) and `/` (inference profile ARNs) are encoded as AWS does.
fn encode_label(out: &mut String, label: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in label.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

/// The `anthropic-beta` flags, from every such header, comma-separated, without duplicates.
fn beta_values(headers: &HeaderMap) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for value in headers.get_all("anthropic-beta") {
        let Ok(value) = value.to_str() else { continue };
        for flag in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            if !out.contains(&flag) {
                out.push(flag);
            }
        }
    }
    out
}

/// The client's Messages body as Bedrock wants it: `anthropic_version` (and `anthropic_beta`
/// when there are betas) first, then every other top-level member in its order, byte for byte,
/// without `model` and `stream`.
fn rewrite_body(body: &[u8], betas: &[&str]) -> Result<Vec<u8>, UpstreamError> {
    // Validates the whole document, so the scanner below can assume well-formed JSON.
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map_err(|e| config(format!("request body is not valid JSON: {e}")))?;
    let members = crate::json::top_level_members(body)
        .ok_or_else(|| config("request body is not a JSON object"))?;
    let mut out =
        Vec::with_capacity(body.len() + 48 + betas.iter().map(|b| b.len() + 3).sum::<usize>());
    out.extend_from_slice(b"{\"anthropic_version\":\"");
    out.extend_from_slice(ANTHROPIC_VERSION.as_bytes());
    out.push(b'"');
    if !betas.is_empty() {
        out.extend_from_slice(b",\"anthropic_beta\":");
        serde_json::to_writer(&mut out, betas)
            .map_err(|e| config(format!("anthropic_beta: {e}")))?;
    }
    for m in &members {
        let drop = matches!(m.key.as_str(), "model" | "stream" | "anthropic_version")
            || (m.key == "anthropic_beta" && !betas.is_empty());
        if !drop {
            out.push(b',');
            out.extend_from_slice(&body[m.start..m.value.end]);
        }
    }
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn opts() -> BedrockOptions {
        BedrockOptions {
            region: "us-east-1".into(),
            endpoint: None,
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretString::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: None,
        }
    }

    /// 2015-08-30T12:36:00Z, the time of the AWS test suite.
    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn rewrite(body: &str, betas: &[&str]) -> String {
        String::from_utf8(rewrite_body(body.as_bytes(), betas).unwrap()).unwrap()
    }

    #[test]
    fn body_loses_model_and_stream_and_keeps_everything_else() {
        let body = r#" { "model" : "claude-x", "max_tokens":1024,"stream": true ,
            "messages":[{"role":"user","content":"a \"model\": } ]"}],
            "temperature": 1.0E+0, "metadata":{"stream":false,"model":"m"},"z":null } "#;
        assert_eq!(
            rewrite(body, &[]),
            r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":1024,"messages":[{"role":"user","content":"a \"model\": } ]"}],"temperature": 1.0E+0,"metadata":{"stream":false,"model":"m"},"z":null}"#
        );
        // Escaped key names are still recognised; a client's own version is replaced.
        assert_eq!(
            rewrite(
                r#"{"mod\u0065l":"x","anthropic_version":"2023-06-01","messages":[]}"#,
                &[]
            ),
            r#"{"anthropic_version":"bedrock-2023-05-31","messages":[]}"#
        );
        assert_eq!(
            rewrite(r#"{"model":"x"}"#, &[]),
            r#"{"anthropic_version":"bedrock-2023-05-31"}"#
        );
        assert_eq!(
            rewrite("{}", &[]),
            r#"{"anthropic_version":"bedrock-2023-05-31"}"#
        );
    }

    #[test]
    fn betas_move_into_the_body() {
        let mut h = HeaderMap::new();
        h.append(
            "anthropic-beta",
            "context-1m-2025-08-07, token-efficient-tools-2025-02-19"
                .parse()
                .unwrap(),
        );
        h.append(
            "anthropic-beta",
            "context-1m-2025-08-07,x\"y".parse().unwrap(),
        );
        let betas = beta_values(&h);
        assert_eq!(
            betas,
            [
                "context-1m-2025-08-07",
                "token-efficient-tools-2025-02-19",
                "x\"y"
            ]
        );
        let out = rewrite(r#"{"anthropic_beta":["old"],"messages":[]}"#, &betas);
        assert_eq!(
            out,
            r#"{"anthropic_version":"bedrock-2023-05-31","anthropic_beta":["context-1m-2025-08-07","token-efficient-tools-2025-02-19","x\"y"],"messages":[]}"#
        );
        // Without a header, a body's own `anthropic_beta` stays.
        assert_eq!(
            rewrite(r#"{"anthropic_beta":["old"]}"#, &[]),
            r#"{"anthropic_version":"bedrock-2023-05-31","anthropic_beta":["old"]}"#
        );
    }

    #[test]
    fn rejects_non_objects() {
        for bad in ["", "[]", "\"x\"", "{", "{} x", "nul"] {
            assert!(
                matches!(
                    rewrite_body(bad.as_bytes(), &[]),
                    Err(UpstreamError::Config(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn signing_matches_the_aws_test_suite() {
        // aws-signing-test-suite/v4/post-vanilla (service "service").
        let creds = Credentials::from_keys(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
        );
        let h = sign_for(
            &creds,
            "us-east-1",
            "service",
            suite_time(),
            "POST",
            "https://example.amazonaws.com/",
            &[("host", "example.amazonaws.com")],
            b"",
        )
        .unwrap();
        let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(get("x-amz-date").unwrap(), "20150830T123600Z");
        let auth = get("authorization").unwrap();
        assert!(auth.is_sensitive());
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        );

        // get-vanilla-with-session-token.
        let creds = Credentials::from_keys(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267".into()),
        );
        let h = sign_for(
            &creds,
            "us-east-1",
            "service",
            suite_time(),
            "GET",
            "https://example.amazonaws.com/",
            &[("host", "example.amazonaws.com")],
            b"",
        )
        .unwrap();
        let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(
            get("authorization").unwrap(),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
        );
        assert!(get("x-amz-security-token").unwrap().is_sensitive());
    }

    #[test]
    fn path_is_double_encoded_for_signing() {
        // AWS signs the sent (once-encoded) path encoded once more, except for S3: a model id's
        // `:` is sent as `%3A` and signed as `%253A`. Recompute the signature from a hand-made
        // canonical request to pin that down.
        use sha2::Digest as _;
        let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let creds = Credentials::from_keys("AKIDEXAMPLE", "secret", None);
        let h = sign_headers(
            &creds,
            "us-east-1",
            suite_time(),
            "POST",
            "https://example.com/model/a.b-v1%3A0/invoke",
            &[("host", "example.com")],
            b"{}",
        )
        .unwrap();
        let creq = format!(
            "POST\n/model/a.b-v1%253A0/invoke\n\nhost:example.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{}",
            hex(&sha2::Sha256::digest(b"{}"))
        );
        let sts = format!(
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/bedrock/aws4_request\n{}",
            hex(&sha2::Sha256::digest(creq.as_bytes()))
        );
        let key = v4::generate_signing_key("secret", suite_time(), "us-east-1", "bedrock");
        let expected = v4::calculate_signature(key, sts.as_bytes());
        let auth = h.into_iter().find(|(k, _)| k == "authorization").unwrap().1;
        assert!(
            auth.to_str()
                .unwrap()
                .ends_with(&format!("Signature={expected}")),
            "{auth:?} vs {expected}"
        );
    }

    #[test]
    fn prepare_builds_a_signed_deterministic_request() {
        let b = Bedrock::new(opts()).unwrap();
        let mut h = HeaderMap::new();
        h.insert("anthropic-version", "2023-06-01".parse().unwrap());
        h.insert("anthropic-beta", "b1".parse().unwrap());
        h.insert("x-api-key", "sk-client".parse().unwrap());
        h.insert("authorization", "Bearer sk-client".parse().unwrap());
        h.insert("x-amz-date", "19990101T000000Z".parse().unwrap());
        h.insert("user-agent", "test/1".parse().unwrap());
        h.insert("x-mock-status", "429".parse().unwrap());
        h.insert("content-length", "5".parse().unwrap());
        let body = br#"{"model":"claude","max_tokens":5,"messages":[],"stream":true}"#;
        let model = "anthropic.claude-sonnet-4-5-20250929-v1:0";
        let r1 = b.prepare(model, true, &h, body, suite_time()).unwrap();
        let r2 = b.prepare(model, true, &h, body, suite_time()).unwrap();
        assert_eq!(r1.method(), Method::POST);
        assert_eq!(
            r1.uri(),
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
        );
        assert_eq!(
            &r1.body()[..],
            br#"{"anthropic_version":"bedrock-2023-05-31","anthropic_beta":["b1"],"max_tokens":5,"messages":[]}"#
        );
        let hs = r1.headers();
        let names: Vec<&str> = hs.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "host",
                "content-type",
                "accept",
                "user-agent",
                "x-mock-status",
                "x-amz-date",
                "authorization"
            ]
        );
        assert_eq!(hs["host"], "bedrock-runtime.us-east-1.amazonaws.com");
        assert_eq!(hs["accept"], "application/vnd.amazon.eventstream");
        assert_eq!(hs["x-amz-date"], "20150830T123600Z");
        let auth = hs["authorization"].to_str().unwrap();
        assert!(hs["authorization"].is_sensitive());
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=accept;content-type;host;x-amz-date, Signature="
            ),
            "{auth}"
        );
        let sig = auth.rsplit("Signature=").next().unwrap();
        assert_eq!(sig.len(), 64);
        assert!(sig.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(r1.headers()["authorization"], r2.headers()["authorization"]);

        // Another second, another model or another body: another signature.
        let later = b
            .prepare(model, true, &h, body, suite_time() + Duration::from_secs(1))
            .unwrap();
        assert_ne!(later.headers()["authorization"], hs["authorization"]);
        let plain = b.prepare(model, false, &h, body, suite_time()).unwrap();
        assert!(plain.uri().path().ends_with("v1%3A0/invoke"));
        assert_eq!(plain.headers()["accept"], "application/json");
        assert_ne!(plain.headers()["authorization"], hs["authorization"]);
    }

    #[test]
    fn session_token_endpoint_override_and_arn_model_ids() {
        let mut o = opts();
        o.session_token = Some(SecretString::new("tok"));
        o.endpoint = Some("http://127.0.0.1:9000/base/".into());
        let b = Bedrock::new(o).unwrap();
        let r = b
            .prepare(
                "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-x",
                false,
                &HeaderMap::new(),
                b"{}",
                suite_time(),
            )
            .unwrap();
        assert_eq!(
            r.uri(),
            "http://127.0.0.1:9000/base/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-x/invoke"
        );
        assert_eq!(r.headers()["host"], "127.0.0.1:9000");
        assert_eq!(r.headers()["x-amz-security-token"], "tok");
        assert!(r.headers()["x-amz-security-token"].is_sensitive());
        assert!(
            r.headers()["authorization"].to_str().unwrap().contains(
                "SignedHeaders=accept;content-type;host;x-amz-date;x-amz-security-token,"
            )
        );
        // A default port is not part of the host.
        let mut o = opts();
        o.endpoint = Some("https://vpce.example.com:443".into());
        let b = Bedrock::new(o).unwrap();
        let r = b
            .prepare("m", false, &HeaderMap::new(), b"{}", suite_time())
            .unwrap();
        assert_eq!(r.headers()["host"], "vpce.example.com");
    }

    #[test]
    fn invalid_settings_are_config_errors() {
        let bad: [fn(&mut BedrockOptions); 7] = [
            |o| o.region = String::new(),
            |o| o.region = "us east".into(),
            |o| o.endpoint = Some("not a url".into()),
            |o| o.endpoint = Some("ftp://x.example".into()),
            |o| o.endpoint = Some("https://u:p@x.example".into()),
            |o| o.access_key_id = String::new(),
            |o| o.session_token = Some(SecretString::new("a\nb")),
        ];
        for f in bad {
            let mut o = opts();
            f(&mut o);
            assert!(matches!(Bedrock::new(o), Err(UpstreamError::Config(_))));
        }
        let b = Bedrock::new(opts()).unwrap();
        for id in ["", ".", ".."] {
            assert!(
                b.prepare(id, false, &HeaderMap::new(), b"{}", suite_time())
                    .is_err()
            );
        }
        assert!(
            b.prepare("m", false, &HeaderMap::new(), b"[1]", suite_time())
                .is_err()
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let mut o = opts();
        o.session_token = Some(SecretString::new("session-secret"));
        let b = Bedrock::new(o.clone()).unwrap();
        let r = b
            .prepare("m", false, &HeaderMap::new(), b"{}", suite_time())
            .unwrap();
        let dbg = format!("{b:?} {o:?} {:?}", r.headers());
        for secret in ["wJalrXUtnFEMI", "session-secret", "Signature="] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
    }
}
