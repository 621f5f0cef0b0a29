-- One admission: every scope's buckets and the tenant's budget counters, all or nothing, with
-- the semantics of LocalBackend::admit and the kernel's admit_keeping.
--
-- KEYS: one hash per scope, then (with a budget) the day and month spend counters.
-- ARGV: now_us ('' = Redis TIME), n_scopes, demand (requests, input, output), has_budget,
--       cost, daily limit, monthly limit (-1 = none), day TTL ms, month TTL ms, then per
--       scope: keep_free_ppm and (per_minute, burst) x 3 (-1 = not limited), then the
--       replica's id and the claim grace (µs).
-- Returns: status (0 admitted, 1 wait, 2 never fits, 3 budget), three details (wait: scope,
--       dimension, µs or -1; never fits: scope, dimension, 0; budget: period 0 day / 1 month,
--       limit, spent), day and month spent after (-1 without a budget), the time used, then
--       per scope and dimension: limit (-1 = not limited), remaining, µs until full (-1 never).

local now = now_us(ARGV[1])
local n = tonumber(ARGV[2])
local demand = { tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]) }
local has_budget = ARGV[6] == '1'
local cost = tonumber(ARGV[7])
local daily, monthly = tonumber(ARGV[8]), tonumber(ARGV[9])

local scopes, stales, keeps = {}, {}, {}
local i = 12
for s = 1, n do
  keeps[s] = math.min(tonumber(ARGV[i]), 1000000)
  local rates
  rates, i = parse_rates(i + 1)
  scopes[s], stales[s] = load_scope(KEYS[s], rates, now)
end
local replica, grace = ARGV[i], tonumber(ARGV[i + 1])

local status, d1, d2, d3 = 0, 0, 0, 0

-- The budget first, as LocalBackend: a spent budget refuses without debiting any bucket.
local day_spent, month_spent = -1, -1
if has_budget then
  day_spent = tonumber(redis.call('GET', KEYS[n + 1]) or '0')
  month_spent = tonumber(redis.call('GET', KEYS[n + 2]) or '0')
  if daily >= 0 and day_spent + cost > daily then
    status, d1, d2, d3 = 3, 0, daily, day_spent
  elseif monthly >= 0 and month_spent + cost > monthly then
    status, d1, d2, d3 = 3, 1, monthly, month_spent
  end
end

if status == 3 then
  -- Refill so the views are current, without debiting.
  for s = 1, n do
    for d = 1, 3 do
      local b = scopes[s][d]
      if b then
        refill(b, now)
      end
    end
  end
else
  -- admit_keeping: refill and check every bucket in order; a demand larger than a bucket
  -- stops at once (later buckets are left as they were); otherwise the longest wait wins
  -- (the first one on ties).
  local worst_w = 0
  for s = 1, n do
    local keep = keeps[s]
    for d = 1, 3 do
      local b = scopes[s][d]
      if b then
        local floor = fdiv(b.burst * keep, 1000000)
        local amount = demand[d] + floor
        refill(b, now)
        if amount > b.burst then
          status, d1, d2, d3 = 2, s - 1, d - 1, 0
          break
        end
        local w = wait_us(b, amount)
        -- A call that takes nothing in this dimension is never held up by its debt.
        if demand[d] == 0 then
          w = 0
        end
        if w > 0 and (status ~= 1 or w > worst_w) then
          status, d1, d2, worst_w = 1, s - 1, d - 1, w
        end
      end
    end
    if status == 2 then
      break
    end
  end
  -- Claims: a replica refused for want of room claims the room it needed in that scope
  -- until its wait is over plus a grace (its next try), and another replica's call is
  -- admitted meanwhile only if it leaves that room. Without this, first come at the moment
  -- the bucket refills wins: with periodic clients, the replica whose calls arrive just after
  -- that moment wins every time and the other none (docs/rate-limiting.md, "Replicas").
  local claims = {}
  for s = 1, n do
    claims[s] = redis.call('HMGET', KEYS[s], 'cr', 'ct', 'cn', 'cd')
  end
  if status == 0 then
    for s = 1, n do
      local c = claims[s]
      local cd = tonumber(c[4])
      if c[1] and c[1] ~= replica and tonumber(c[2]) > now and cd and demand[cd] > 0 then
        local b = scopes[s][cd]
        if b then
          local floor = fdiv(b.burst * keeps[s], 1000000)
          local w = math.min(wait_us(b, demand[cd] + floor + tonumber(c[3])), tonumber(c[2]) - now)
          if w > 0 and (status ~= 1 or w > worst_w) then
            status, d1, d2, worst_w = 1, s - 1, cd - 1, w
          end
        end
      end
    end
    if status == 0 then
      for s = 1, n do
        if claims[s][1] == replica then
          redis.call('HDEL', KEYS[s], 'cr', 'ct', 'cn', 'cd')
        end
      end
    end
  elseif status == 1 and worst_w ~= INF then
    local c = claims[d1 + 1]
    if not c[1] or c[1] == replica or tonumber(c[2]) <= now then
      redis.call('HSET', KEYS[d1 + 1], 'cr', replica, 'ct', int(now + worst_w + grace),
        'cn', int(demand[d2 + 1]), 'cd', d2 + 1)
    end
  end
  if status == 1 then
    d3 = worst_w
    if d3 == INF then
      d3 = -1
    end
  elseif status == 0 then
    for s = 1, n do
      for d = 1, 3 do
        local b = scopes[s][d]
        if b then
          take(b, demand[d])
        end
      end
    end
    if has_budget then
      day_spent = redis.call('INCRBY', KEYS[n + 1], int(cost))
      month_spent = redis.call('INCRBY', KEYS[n + 2], int(cost))
      redis.call('PEXPIRE', KEYS[n + 1], ARGV[10])
      redis.call('PEXPIRE', KEYS[n + 2], ARGV[11])
    end
  end
end

for s = 1, n do
  store_scope(KEYS[s], scopes[s], stales[s])
end

local out = { status, d1, d2, d3, day_spent, month_spent, now }
for s = 1, n do
  for d = 1, 3 do
    view(out, scopes[s][d])
  end
end
return out
