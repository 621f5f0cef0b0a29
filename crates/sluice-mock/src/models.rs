//! `GET /v1/models` and `GET /v1/models/{id}`, plus the cursor paging shared with the batch list
//! (`limit`, `after_id`, `before_id` → `data`, `first_id`, `last_id`, `has_more`).

use serde_json::{Value, json};

/// The catalogue in the order of `models_list.json`, then older models: (id, display name,
/// created_at).
const MODELS: [(&str, &str, &str); 6] = [
    (
        "claude-opus-4-5-20251101",
        "Claude Opus 4.5",
        "2025-11-01T00:00:00Z",
    ),
    (
        "claude-sonnet-4-5-20250929",
        "Claude Sonnet 4.5",
        "2025-09-29T00:00:00Z",
    ),
    (
        "claude-haiku-4-5-20251001",
        "Claude Haiku 4.5",
        "2025-10-01T00:00:00Z",
    ),
    (
        "claude-opus-4-1-20250805",
        "Claude Opus 4.1",
        "2025-08-05T00:00:00Z",
    ),
    (
        "claude-sonnet-4-20250514",
        "Claude Sonnet 4",
        "2025-05-14T00:00:00Z",
    ),
    (
        "claude-3-5-haiku-20241022",
        "Claude Haiku 3.5",
        "2024-10-22T00:00:00Z",
    ),
];

fn model_json(&(id, name, created): &(&str, &str, &str)) -> Value {
    json!({
        "type": "model",
        "id": id,
        "display_name": name,
        "created_at": created,
        "max_input_tokens": 200_000,
        "max_tokens": 64_000,
    })
}

/// One model by id or by alias (the id without its date suffix, e.g. `claude-sonnet-4-5`).
pub(crate) fn get(id: &str) -> Option<Value> {
    MODELS
        .iter()
        .find(|(m, _, _)| {
            *m == id
                || m.strip_prefix(id)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|date| date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(model_json)
}

/// Paging parameters of a list call.
#[derive(Debug, Default)]
pub(crate) struct PageQuery {
    pub(crate) limit: usize,
    pub(crate) after_id: Option<String>,
    pub(crate) before_id: Option<String>,
}

impl PageQuery {
    /// Parses `limit` (1..=1000, default 20), `after_id` and `before_id`; other keys are ignored.
    pub(crate) fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut q = Self {
            limit: 20,
            ..Self::default()
        };
        for pair in query.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "limit" => {
                    q.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or("limit: must be an integer between 1 and 1000")?;
                }
                "after_id" if !v.is_empty() => q.after_id = Some(v.to_owned()),
                "before_id" if !v.is_empty() => q.before_id = Some(v.to_owned()),
                _ => {}
            }
        }
        Ok(q)
    }
}

/// Picks a page out of `len` items in list order. `after` is the index of the first item after
/// the `after_id` cursor, `before` the index of the first item at or past the `before_id` cursor.
/// Returns the index range and `has_more` (more items in the direction of travel).
pub(crate) fn page(
    len: usize,
    limit: usize,
    after: Option<usize>,
    before: Option<usize>,
) -> (std::ops::Range<usize>, bool) {
    match (after, before) {
        (Some(a), b) => {
            let end_bound = b.unwrap_or(len).min(len);
            let start = a.min(end_bound);
            let end = (start + limit).min(end_bound);
            (start..end, end < end_bound)
        }
        (None, Some(b)) => {
            let b = b.min(len);
            let start = b.saturating_sub(limit);
            (start..b, start > 0)
        }
        (None, None) => {
            let end = limit.min(len);
            (0..end, end < len)
        }
    }
}

/// Wraps a page of objects in the list envelope.
pub(crate) fn list_envelope(data: Vec<Value>, has_more: bool) -> Value {
    let first = data.first().and_then(|v| v.get("id")).cloned();
    let last = data.last().and_then(|v| v.get("id")).cloned();
    json!({
        "data": data,
        "first_id": first,
        "last_id": last,
        "has_more": has_more,
    })
}

/// `GET /v1/models`.
pub(crate) fn list(q: &PageQuery) -> Value {
    let index_of = |id: &str| MODELS.iter().position(|(m, _, _)| *m == id);
    // An unknown cursor yields an empty page rather than an error: nothing follows it.
    let after = q
        .after_id
        .as_deref()
        .map(|id| index_of(id).map_or(MODELS.len(), |i| i + 1));
    let before = q.before_id.as_deref().map(|id| index_of(id).unwrap_or(0));
    let (range, has_more) = page(MODELS.len(), q.limit, after, before);
    let data = MODELS[range].iter().map(model_json).collect();
    list_envelope(data, has_more)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn paging_walks_both_ways() {
        assert_eq!(page(6, 2, None, None), (0..2, true));
        assert_eq!(page(6, 2, Some(2), None), (2..4, true));
        assert_eq!(page(6, 2, Some(4), None), (4..6, false));
        assert_eq!(page(6, 2, None, Some(4)), (2..4, true));
        assert_eq!(page(6, 2, None, Some(2)), (0..2, false));
        assert_eq!(page(0, 20, None, None), (0..0, false));
    }

    #[test]
    fn aliases_resolve() {
        assert_eq!(
            get("claude-sonnet-4-5").unwrap()["id"],
            "claude-sonnet-4-5-20250929"
        );
        assert!(get("claude-sonnet").is_none());
        assert!(get("claude-nonexistent").is_none());
    }
}
