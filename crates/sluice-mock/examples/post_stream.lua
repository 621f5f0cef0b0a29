-- wrk script: POST a small streaming Messages request (see serve.rs).
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"model":"claude-haiku-4-5-20251001","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"Say hello in a few words."}]}'
