-- GCRA over every limit of one request, all or nothing, in one atomic step.
-- KEYS[i]: one counter per limit. ARGV[2i-1]: emission interval, ARGV[2i]: window
-- (interval x capacity), both in microseconds.
-- Returns {admitted, ok_1, remaining_1, wait_1, ok_2, ...}: ok_i is 1 when limit i alone would
-- admit; waits in microseconds.
-- The clock is Redis's own, so instances with skewed clocks still agree.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {1}
local tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local used = new_tat - now
  if used > window then
    out[1] = 0
    out[3 * i - 1] = 0
    out[3 * i] = 0
    out[3 * i + 1] = used - window
  else
    tats[i] = new_tat
    out[3 * i - 1] = 1
    out[3 * i] = math.floor((window - used) / interval)
    out[3 * i + 1] = used
  end
end
if out[1] == 1 then
  for i = 1, #KEYS do
    local ttl = math.ceil((tats[i] - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
  end
end
return out
