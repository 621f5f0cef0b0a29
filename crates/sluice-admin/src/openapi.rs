//! The admin API's OpenAPI 3.1 document, hand-written (`openapi.json` next to this file) and
//! served as is at `GET /admin/openapi.json`. A test walks every path and method in it against
//! the router, and every route of the router against it.

/// The document.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// Every (method, path template) the document declares, methods in upper case.
pub fn operations() -> Result<Vec<(String, String)>, serde_json::Error> {
    let doc: serde_json::Value = serde_json::from_str(DOCUMENT)?;
    let mut out = Vec::new();
    if let Some(paths) = doc.get("paths").and_then(|p| p.as_object()) {
        for (path, item) in paths {
            if let Some(item) = item.as_object() {
                for method in item.keys() {
                    if matches!(
                        method.as_str(),
                        "get" | "post" | "put" | "patch" | "delete" | "head" | "options"
                    ) {
                        out.push((method.to_uppercase(), path.clone()));
                    }
                }
            }
        }
    }
    Ok(out)
}
