-- Sluice limiter: the bucket kernel of crates/sluice-limits/src/bucket.rs, line for line, in
-- Redis Lua. Prepended to every script (admit, settle, observe).
--
-- Lua 5.1 numbers are doubles, so integers are exact only below 2^53 (about 9.007e15). The Rust
-- side clamps every rate and demand to MAX_TOKENS (1e9 tokens) before calling, so a level is
-- at most 1e15 micro-tokens, an amount (demand plus a keep-free floor) at most 2e15, and debt is
-- floored at LEVEL_MIN below; every sum and product formed here stays below 2^53. Divisions
-- go through fdiv, which corrects the rounding of the double quotient so the result is the
-- exact integer floor, as the i128 maths in Rust.

local MICRO = 1000000
local LEVEL_MIN = -4000000000000000
-- "Never" (a bucket that does not refill): answered as -1 to the caller.
local INF = math.huge

local function fdiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

-- Integers as exact decimal strings: tostring() would print 15 significant digits only.
local function int(x)
  return string.format('%.0f', x)
end

local function now_us(arg)
  if arg ~= nil and arg ~= '' then
    return tonumber(arg)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * MICRO + tonumber(t[2])
end

-- A bucket: pm (per minute), burst (tokens), level (micro-tokens), last (µs).
local function full(pm, burst, now)
  return { pm = pm, burst = burst, level = burst * MICRO, last = now }
end

-- Bucket::refill: add what now - last earned, up to capacity; time never runs backwards.
-- earned = elapsed * pm / 60 (micro-tokens), computed as q * pm + floor(r * pm / 60) with
-- elapsed = 60 q + r, so no product can pass 2^53 (a bucket that would be full anyway is).
local function refill(b, now)
  if now <= b.last then
    return
  end
  local cap = b.burst * MICRO
  if b.level < cap then
    local need = cap - b.level
    local earned = 0
    if b.pm > 0 then
      local elapsed = now - b.last
      local q = fdiv(elapsed, 60)
      local r = elapsed - q * 60
      if q >= fdiv(need + b.pm - 1, b.pm) then
        earned = need
      else
        earned = q * b.pm + fdiv(r * b.pm, 60)
      end
    end
    b.level = math.min(b.level + earned, cap)
  end
  b.last = now
end

-- Bucket::wait_us: µs until `amount` tokens are there, ceil(need * 60 / pm), split as above.
local function wait_us(b, amount)
  local need = amount * MICRO - b.level
  if need <= 0 then
    return 0
  end
  if b.pm == 0 then
    return INF
  end
  local a = fdiv(need, b.pm)
  local rem = need - a * b.pm
  return a * 60 + fdiv(rem * 60 + b.pm - 1, b.pm)
end

local function take(b, amount)
  b.level = math.max(b.level - amount * MICRO, LEVEL_MIN)
end

local function give(b, amount)
  b.level = math.min(b.level + amount * MICRO, b.burst * MICRO)
end

-- Fields of dimension d (1 requests, 2 input tokens, 3 output tokens) in a scope's hash:
-- level, time of the last refill, and the rate the bucket was last used with (per minute,
-- burst), so a settlement refills at the bucket's own rate, as the Rust Bucket does.
local FIELDS = {
  { 'rl', 'rt', 'rp', 'rb' },
  { 'il', 'it', 'ip', 'ib' },
  { 'ol', 'ot', 'op', 'ob' },
}

-- Field 'z' marks a scope whose every dimension was unlimited by a reload: without it the
-- emptied hash would vanish and read as expired (full) to a late settlement.
local function read_scope(key)
  return redis.call('HMGET', key,
    'rl', 'rt', 'rp', 'rb', 'il', 'it', 'ip', 'ib', 'ol', 'ot', 'op', 'ob', 'z')
end

-- Load the buckets of one scope for `rates` (rates[d] = {pm, burst} or nil: not limited), as
-- Rates::apply_to does: a missing or expired bucket starts full at `now` (a key only expires
-- once it would be full anyway), a changed rate keeps the level but never above the new
-- capacity, a dimension no longer limited is dropped. Returns the buckets and the fields to
-- delete.
local function load_scope(key, rates, now)
  local raw = read_scope(key)
  local buckets, stale = {}, {}
  for d = 1, 3 do
    local lvl, last = raw[4 * d - 3], raw[4 * d - 2]
    local r = rates[d]
    if r then
      if lvl and last then
        buckets[d] = {
          pm = r[1], burst = r[2],
          level = math.min(tonumber(lvl), r[2] * MICRO),
          last = tonumber(last),
        }
      else
        buckets[d] = full(r[1], r[2], now)
      end
    elseif lvl or last then
      for _, f in ipairs(FIELDS[d]) do
        stale[#stale + 1] = f
      end
    end
  end
  return buckets, stale
end

-- Load the buckets of one scope as they are stored, with their own rates (a settlement):
-- dimensions without state are left alone (no longer limited). A key that expired altogether
-- is the full buckets of `rates` (the admission's), which it would have been.
local function load_stored(key, rates, now)
  local raw = read_scope(key)
  local any = false
  for i = 1, 13 do
    if raw[i] then
      any = true
    end
  end
  if not any then
    local buckets = {}
    for d = 1, 3 do
      if rates[d] then
        buckets[d] = full(rates[d][1], rates[d][2], now)
      end
    end
    return buckets
  end
  local buckets = {}
  for d = 1, 3 do
    local lvl, last, pm, burst = raw[4 * d - 3], raw[4 * d - 2], raw[4 * d - 1], raw[4 * d]
    if lvl and last and pm and burst then
      buckets[d] = {
        pm = tonumber(pm), burst = tonumber(burst),
        level = tonumber(lvl), last = tonumber(last),
      }
    end
  end
  return buckets
end

-- Longest TTL to keep for a scope's hash: until its slowest bucket is full again, plus a
-- margin; after that the state equals a fresh full bucket, so expiring it loses nothing.
local TTL_MARGIN_MS = 60000
local TTL_MAX_MS = 7 * 24 * 3600 * 1000
local function ttl_ms(buckets)
  local longest = 0
  for d = 1, 3 do
    local b = buckets[d]
    if b then
      local w = wait_us(b, b.burst)
      if w > longest then
        longest = w
      end
    end
  end
  if longest == INF then
    return TTL_MAX_MS
  end
  return math.min(fdiv(longest + 999, 1000) + TTL_MARGIN_MS, TTL_MAX_MS)
end

-- Write a scope's buckets back (and drop the fields of dimensions no longer limited).
local function store_scope(key, buckets, stale)
  local args = {}
  for d = 1, 3 do
    local b = buckets[d]
    if b then
      local f = FIELDS[d]
      args[#args + 1] = f[1]
      args[#args + 1] = int(b.level)
      args[#args + 1] = f[2]
      args[#args + 1] = int(b.last)
      args[#args + 1] = f[3]
      args[#args + 1] = int(b.pm)
      args[#args + 1] = f[4]
      args[#args + 1] = int(b.burst)
    end
  end
  if #stale > 0 then
    redis.call('HDEL', key, unpack(stale))
  end
  if #args > 0 then
    redis.call('HSET', key, unpack(args))
    redis.call('PEXPIRE', key, int(ttl_ms(buckets)))
  elseif #stale > 0 then
    redis.call('HSET', key, 'z', '1')
    redis.call('PEXPIRE', key, int(TTL_MARGIN_MS))
  end
end

-- Parse the rates of one scope from ARGV starting at index i: pm, burst per dimension, -1 for
-- "not limited". Returns the rates and the next index.
local function parse_rates(i)
  local rates = {}
  for d = 1, 3 do
    local pm, burst = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    if pm >= 0 then
      rates[d] = { pm, burst }
    end
    i = i + 2
  end
  return rates, i
end

-- A bucket's view: limit, whole tokens remaining (0 in debt), µs until full (-1: never).
local function view(out, b)
  if not b then
    out[#out + 1] = -1
    out[#out + 1] = 0
    out[#out + 1] = 0
    return
  end
  out[#out + 1] = b.pm
  out[#out + 1] = math.max(fdiv(b.level, MICRO), 0)
  local f = wait_us(b, b.burst)
  if f == INF then
    f = -1
  end
  out[#out + 1] = f
end
