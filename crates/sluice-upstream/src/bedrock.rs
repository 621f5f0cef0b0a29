//! Claude on AWS Bedrock: SigV4-signed `InvokeModel` / `InvokeModelWithResponseStream`, with
//! event-stream frames transcoded to the Anthropic SSE stream.
