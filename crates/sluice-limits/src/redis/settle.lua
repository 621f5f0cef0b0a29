-- One settlement: correct an admitted call's reservation to the truth (the kernel's settle and
-- LocalBackend::settle): refund what was reserved and not used, charge what was used and not
-- reserved (a bucket may go into debt); correct the spend counters the reservation went to.
--
-- KEYS: one hash per scope, then (with a budget) the day and month spend counters of the
--       period the call was admitted in.
-- ARGV: now_us ('' = Redis TIME), n_scopes, reserved (requests, input, output), actual
--       (requests, input, output), has_budget, reserved cost, actual cost, then per scope
--       (per_minute, burst) x 3 (-1 = not limited): the admission's rates, used only for a
--       hash that expired since.

local now = now_us(ARGV[1])
local n = tonumber(ARGV[2])
local reserved = { tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]) }
local actual = { tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]) }
local has_budget = ARGV[9] == '1'
local cost_reserved, cost_actual = tonumber(ARGV[10]), tonumber(ARGV[11])

local i = 12
for s = 1, n do
  local rates
  rates, i = parse_rates(i)
  local buckets = load_stored(KEYS[s], rates, now)
  for d = 1, 3 do
    local b = buckets[d]
    if b then
      refill(b, now)
      if actual[d] > reserved[d] then
        take(b, actual[d] - reserved[d])
      else
        give(b, reserved[d] - actual[d])
      end
    end
  end
  store_scope(KEYS[s], buckets, {})
end

if has_budget then
  -- Only a counter that still exists is corrected: the call is charged to the period it was
  -- admitted in, and a counter that expired belongs to a period long over.
  for k = n + 1, n + 2 do
    local v = redis.call('GET', KEYS[k])
    if v then
      local fixed = math.max(tonumber(v) - cost_reserved, 0) + cost_actual
      redis.call('SET', KEYS[k], int(fixed), 'KEEPTTL')
    end
  end
end
return 0
