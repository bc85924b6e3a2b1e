-- One authentication failure of one source, for every instance at once.
-- KEYS[1]: the failure count, KEYS[2]: the lock-out. ARGV: max, window ms, cool-down ms.
-- Returns the lock-out's remaining milliseconds, or 0 when the source is not locked out.
local left = redis.call('PTTL', KEYS[2])
if left > 0 then
  return left
end
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if n > tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return tonumber(ARGV[3])
end
return 0
