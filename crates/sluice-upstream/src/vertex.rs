//! Claude on Google Vertex AI: `rawPredict` / `streamRawPredict` with OAuth tokens from a
//! service-account file or the metadata server.
