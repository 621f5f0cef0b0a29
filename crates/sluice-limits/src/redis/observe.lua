-- The upstream reported `remaining` tokens in one dimension of an org-pool scope: lower that
-- bucket's level to it if it is above (LocalBackend::observe), never raise it. The scope's
-- other buckets are brought to the current rates, as there.
--
-- KEYS: the scope's hash.
-- ARGV: now_us ('' = Redis TIME), dimension (1 requests, 2 input, 3 output), remaining, then
--       (per_minute, burst) x 3 (-1 = not limited).

local now = now_us(ARGV[1])
local dim = tonumber(ARGV[2])
local remaining = tonumber(ARGV[3])
local rates = parse_rates(4)
local buckets, stale = load_scope(KEYS[1], rates, now)
local b = buckets[dim]
if b then
  refill(b, now)
  b.level = math.min(b.level, remaining * MICRO)
end
store_scope(KEYS[1], buckets, stale)
return 0
