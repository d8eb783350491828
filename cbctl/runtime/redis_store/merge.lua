-- cbctl's lattice merge, run atomically inside Redis (EVALSHA). The same result as cbctl/runtime/lattices.py,
-- byte for byte: the stored value is always msgpack.packb(merged.to_wire()).
--
-- KEYS[1]  the Redis key
-- KEYS[2]  optional: a Redis SET indexing the keys written (cbctl's own keys: listing them needs no SCAN);
--          in KEYS[1]'s cluster slot
-- ARGV[1]  the incoming lattice: msgpack of Lattice.to_wire() (what the embedded store receives)
-- ARGV[2]  '' | 'publish' | 'spublish': push the merged value (a set: the incoming elements) on ARGV[3]
-- ARGV[3]  the channel (the Redis key's own name, so SPUBLISH stays in the key's slot)
-- Returns 1 when the stored value changed, 0 for a no-op (nothing written, nothing published).
--
-- Kinds: lww and max keep one operand (its bytes as they came); causal is rebuilt and re-encoded in
-- to_wire's order; a set is a native Redis SET of msgpack-packed elements (SADD: a union at ~1 us, where
-- re-sorting a packed set here would block the node for O(n log n)). map and vc lattices are refused.
--
-- Why no cmsgpack: Redis 7.0's cmsgpack cannot read msgpack bin, re-encodes every string as str, rounds
-- integers above 2^53 (time_ns timestamps) and turns nil holes into maps. The decoder below keeps every
-- scalar as a position in its source string, integers as exact (high, low) 32-bit halves, and compares
-- strings bytewise (Lua's < is strcoll, i.e. the server's locale).

local byte, sub, concat, char = string.byte, string.sub, table.concat, string.char
local floor = math.floor
local TWO32 = 4294967296
local TWO53 = 9007199254740992

local function bad(msg)
  error({err = 'ERR cbctl: ' .. msg})
end

-- ---- decoding ------------------------------------------------------------------------------------

local function uint(s, p, n) -- big-endian unsigned integer of n <= 4 bytes at p
  local v = 0
  for i = p, p + n - 1 do v = v * 256 + byte(s, i) end
  return v
end

local decode

local function need(s, p, n)
  if p + n - 1 > #s then bad('truncated msgpack value') end
end

local function signed(s, p, n) -- an n-byte (n <= 4) two's complement integer as (hs, lo)
  need(s, p, n)
  local v = uint(s, p, n)
  local half = 2 ^ (8 * n - 1)
  if v >= half then return -1, v - 2 * half + TWO32 end
  return 0, v
end

local function container(s, a, count, p, is_map)
  local node = {t = is_map and 'map' or 'arr', n = count, a = a}
  if is_map then
    node.k, node.v = {}, {}
    for i = 1, count do
      node.k[i], p = decode(s, p)
      node.v[i], p = decode(s, p)
    end
  else
    node.items = {}
    for i = 1, count do node.items[i], p = decode(s, p) end
  end
  node.b = p - 1
  return node, p
end

local function bytes_node(t, s, a, hdr, n)
  need(s, a + hdr, n)
  return {t = t, s = s, p = a + hdr, n = n, a = a, b = a + hdr + n - 1}, a + hdr + n
end

-- one msgpack object at position p of s: (node, next position). Integers: {t='int', hs, lo} with the value
-- hs * 2^32 + lo, 0 <= lo < 2^32 (exact in doubles); strings and bins: {s, p, n} (payload position).
decode = function(s, p)
  local c = byte(s, p)
  if c == nil then bad('truncated msgpack value') end
  if c < 0x80 then return {t = 'int', hs = 0, lo = c, a = p, b = p}, p + 1 end
  if c >= 0xe0 then return {t = 'int', hs = -1, lo = c - 256 + TWO32, a = p, b = p}, p + 1 end
  if c <= 0x8f then return container(s, p, c - 0x80, p + 1, true) end
  if c <= 0x9f then return container(s, p, c - 0x90, p + 1, false) end
  if c <= 0xbf then return bytes_node('str', s, p, 1, c - 0xa0) end
  if c == 0xc0 then return {t = 'nil', a = p, b = p}, p + 1 end
  if c == 0xc2 or c == 0xc3 then return {t = 'bool', v = (c == 0xc3), a = p, b = p}, p + 1 end
  if c >= 0xc4 and c <= 0xc6 then
    local w = 2 ^ (c - 0xc4)
    need(s, p + 1, w)
    return bytes_node('bin', s, p, 1 + w, uint(s, p + 1, w))
  end
  if c >= 0xd9 and c <= 0xdb then
    local w = 2 ^ (c - 0xd9)
    need(s, p + 1, w)
    return bytes_node('str', s, p, 1 + w, uint(s, p + 1, w))
  end
  if c == 0xca or c == 0xcb then
    local w = (c == 0xca) and 4 or 8
    need(s, p + 1, w)
    local v = struct.unpack((c == 0xca) and '>f' or '>d', sub(s, p + 1, p + w))
    return {t = 'float', v = v, a = p, b = p + w}, p + 1 + w
  end
  if c >= 0xcc and c <= 0xce then
    local w = 2 ^ (c - 0xcc)
    need(s, p + 1, w)
    return {t = 'int', hs = 0, lo = uint(s, p + 1, w), a = p, b = p + w}, p + 1 + w
  end
  if c == 0xcf or c == 0xd3 then
    need(s, p + 1, 8)
    local hi, lo = uint(s, p + 1, 4), uint(s, p + 5, 4)
    if c == 0xd3 and hi >= 2147483648 then hi = hi - TWO32 end
    return {t = 'int', hs = hi, lo = lo, a = p, b = p + 8}, p + 9
  end
  if c >= 0xd0 and c <= 0xd2 then
    local w = 2 ^ (c - 0xd0)
    local hs, lo = signed(s, p + 1, w)
    return {t = 'int', hs = hs, lo = lo, a = p, b = p + w}, p + 1 + w
  end
  if c == 0xdc or c == 0xdd then
    local w = (c == 0xdc) and 2 or 4
    need(s, p + 1, w)
    return container(s, p, uint(s, p + 1, w), p + 1 + w, false)
  end
  if c == 0xde or c == 0xdf then
    local w = (c == 0xde) and 2 or 4
    need(s, p + 1, w)
    return container(s, p, uint(s, p + 1, w), p + 1 + w, true)
  end
  bad(string.format('msgpack type 0x%02x is not part of a lattice', c))
end

local function decode_all(s)
  local node, p = decode(s, 1)
  if p ~= #s + 1 then bad('trailing bytes after the lattice') end
  return node
end

local function payload(node) return sub(node.s, node.p, node.p + node.n - 1) end

-- ---- comparing -------------------------------------------------------------------------------------

local function icmp(x, y)
  if x.hs ~= y.hs then return x.hs < y.hs and -1 or 1 end
  if x.lo ~= y.lo then return x.lo < y.lo and -1 or 1 end
  return 0
end

-- bytewise, as Python compares bytes and (through UTF-8, code point order) str
local function bcmp(x, y)
  local n = math.min(x.n, y.n)
  local i = 0
  while i < n do
    local k = math.min(4096, n - i)
    local u, v = sub(x.s, x.p + i, x.p + i + k - 1), sub(y.s, y.p + i, y.p + i + k - 1)
    if u ~= v then
      for j = 1, k do
        local cu, cv = byte(u, j), byte(v, j)
        if cu ~= cv then return cu < cv and -1 or 1 end
      end
    end
    i = i + k
  end
  if x.n == y.n then return 0 end
  return x.n < y.n and -1 or 1
end

-- int against float exactly, as Python does: by doubles, and when both round to the same double (then the
-- float is integral, or the int is below 2^53 and was converted exactly), by exact 32-bit halves
local function ncmp(x, y)
  if x.t == 'int' and y.t == 'int' then return icmp(x, y) end
  local dx = (x.t == 'float') and x.v or x.hs * TWO32 + x.lo
  local dy = (y.t == 'float') and y.v or y.hs * TWO32 + y.lo
  if dx ~= dy then return dx < dy and -1 or 1 end
  if x.t == y.t or math.abs(dx) < TWO53 then return 0 end
  local f = (x.t == 'float') and x.v or y.v
  local hs = floor(f / TWO32)
  local exact = {hs = hs, lo = f - hs * TWO32}
  if x.t == 'float' then return icmp(exact, y) end
  return icmp(x, exact)
end

-- ---- encoding (as Python's msgpack.packb with use_bin_type=True writes it) -------------------------

local function be(v, n) -- v (< 2^(8n), n <= 4) as n big-endian bytes
  local out = {}
  for i = n, 1, -1 do
    out[i] = char(v % 256)
    v = floor(v / 256)
  end
  return concat(out)
end

local function enc_uint(x) -- a non-negative int node
  if x.hs > 0 then return '\207' .. be(x.hs, 4) .. be(x.lo, 4) end
  local v = x.lo
  if v < 128 then return char(v) end
  if v < 256 then return '\204' .. char(v) end
  if v < 65536 then return '\205' .. be(v, 2) end
  return '\206' .. be(v, 4)
end

local function header(n, fix, base16)
  if n < 16 then return char(fix + n) end
  if n < 65536 then return char(base16) .. be(n, 2) end
  return char(base16 + 1) .. be(n, 4)
end
local function enc_array(n) return header(n, 0x90, 0xdc) end
local function enc_map(n) return header(n, 0x80, 0xde) end

local function enc_bytes(str, is_bin)
  local n = #str
  if is_bin then
    if n < 256 then return '\196' .. char(n) .. str end
    if n < 65536 then return '\197' .. be(n, 2) .. str end
    return '\198' .. be(n, 4) .. str
  end
  if n < 32 then return char(0xa0 + n) .. str end
  if n < 256 then return '\217' .. char(n) .. str end
  if n < 65536 then return '\218' .. be(n, 2) .. str end
  return '\219' .. be(n, 4) .. str
end

-- ---- the kinds -------------------------------------------------------------------------------------

local function fields(node, kind, arity)
  if node.n ~= arity + 1 then
    bad(string.format("malformed '%s' lattice: expected %d field(s) after the kind tag, got %d",
      kind, arity, node.n - 1))
  end
  return node.items
end

local function lww_parse(node)
  local f = fields(node, 'lww', 4)
  local ts, writer, value, tomb = f[2], f[3], f[4], f[5]
  if ts.t ~= 'int' or writer.t ~= 'str' or tomb.t ~= 'bool' then
    bad('LWW needs an int timestamp, str writer and bool tombstone')
  end
  if tomb.v and value.t ~= 'nil' then bad('an LWW tombstone carries no value') end
  if not tomb.v and value.t ~= 'bin' then bad('an LWW value must be encoded bytes (or a tombstone)') end
  return {ts = ts, writer = writer, tomb = tomb.v, value = value}
end

local EMPTY = {s = '', p = 1, n = 0}

-- Python: current if current._order() >= incoming._order() else incoming, order (ts, writer, tomb, value)
local function lww_incoming_wins(cur, inc)
  local c = icmp(inc.ts, cur.ts)
  if c == 0 then c = bcmp(inc.writer, cur.writer) end
  if c == 0 and inc.tomb ~= cur.tomb then c = inc.tomb and 1 or -1 end
  if c == 0 then
    c = bcmp(inc.value.t == 'bin' and inc.value or EMPTY, cur.value.t == 'bin' and cur.value or EMPTY)
  end
  return c > 0
end

local function max_parse(node)
  local v = fields(node, 'max', 1)[2]
  if v.t ~= 'int' and v.t ~= 'float' then bad('a max lattice holds an int or float') end
  if v.t == 'float' and v.v ~= v.v then bad('a max lattice cannot hold NaN') end
  return v
end

-- a vector clock: map str -> int >= 0, zero entries dropped (as VectorClock does), sorted by node
local function clock_parse(m, what)
  if m.t ~= 'map' then bad(what .. ' must be a dict on the wire') end
  local entries = {}
  for i = 1, m.n do
    local node, count = m.k[i], m.v[i]
    if node.t ~= 'str' or count.t ~= 'int' or count.hs < 0 then bad('a vector clock maps str -> int >= 0') end
    if count.hs ~= 0 or count.lo ~= 0 then entries[#entries + 1] = {node = node, name = payload(node), c = count} end
  end
  table.sort(entries, function(x, y) return bcmp(x.node, y.node) < 0 end)
  return entries
end

local function clock_id(entries) -- equal clocks, equal ids
  local parts = {}
  for i, e in ipairs(entries) do
    parts[i] = #e.name .. ':' .. e.name .. string.format('%.0f:%.0f;', e.c.hs, e.c.lo)
  end
  return concat(parts)
end

local function clock_table(entries)
  local t = {}
  for _, e in ipairs(entries) do t[e.name] = e end
  return t
end

local function clock_le(a, b_table) -- a <= b point-wise (a missing node counts as 0)
  for _, e in ipairs(a) do
    local other = b_table[e.name]
    if other == nil or icmp(e.c, other.c) > 0 then return false end
  end
  return true
end

local function clock_merge(a_table, b_entries) -- point-wise max into a_table
  for _, e in ipairs(b_entries) do
    local have = a_table[e.name]
    if have == nil or icmp(have.c, e.c) < 0 then a_table[e.name] = e end
  end
end

local function enc_clock(t) -- a clock table, as a sorted map
  local entries = {}
  for _, e in pairs(t) do entries[#entries + 1] = e end
  table.sort(entries, function(x, y) return bcmp(x.node, y.node) < 0 end)
  local out = {enc_map(#entries)}
  for _, e in ipairs(entries) do
    out[#out + 1] = enc_bytes(e.name, false)
    out[#out + 1] = enc_uint(e.c)
  end
  return concat(out), entries
end

-- versions keyed by clock id: {clock = entries, values = {payload = true}, deps = {key = clock table}}
local function causal_collect(node, versions, order)
  local list = fields(node, 'causal', 1)[2]
  if list.t ~= 'arr' then bad('causal versions must be a list on the wire') end
  if list.n == 0 then bad('a causal value has at least one version') end
  for _, version in ipairs(list.items) do
    if version.t ~= 'arr' or version.n ~= 3 then bad('a causal version is [clock, values, dependencies]') end
    local clock = clock_parse(version.items[1], 'a vector clock')
    local values, deps = version.items[2], version.items[3]
    if values.t ~= 'arr' then bad('causal values must be a list on the wire') end
    if deps.t ~= 'map' then bad('causal dependencies must be a dict on the wire') end
    local id = clock_id(clock)
    local held = versions[id]
    if held == nil then
      held = {clock = clock, table = clock_table(clock), values = {}, deps = {}}
      versions[id] = held
      order[#order + 1] = id
    end
    for _, v in ipairs(values.items) do
      if v.t ~= 'bin' then bad('causal values must be encoded bytes') end
      held.values[payload(v)] = true
    end
    for i = 1, deps.n do
      local key = deps.k[i]
      if key.t ~= 'str' then bad('map entries must be str -> lattice') end
      local name = payload(key)
      local dep = clock_parse(deps.v[i], 'a dependency clock')
      held.deps[name] = held.deps[name] or {}
      clock_merge(held.deps[name], dep)
    end
  end
end

local function version_before(x, y) -- sorted(clock.items()) order, as CausalLattice.to_wire sorts versions
  local a, b = x.clock, y.clock
  for i = 1, math.min(#a, #b) do
    local c = bcmp(a[i].node, b[i].node)
    if c == 0 then c = icmp(a[i].c, b[i].c) end
    if c ~= 0 then return c < 0 end
  end
  return #a < #b
end

local function causal_merge(cur_node, inc_node, kind_raw) -- cur_node nil: normalise inc_node alone
  local versions, order = {}, {}
  if cur_node then causal_collect(cur_node, versions, order) end
  causal_collect(inc_node, versions, order)
  local kept = {}
  for _, id in ipairs(order) do
    local v = versions[id]
    local dominated = false
    for _, rival_id in ipairs(order) do
      -- distinct ids are distinct clocks, so <= is strictly before
      if rival_id ~= id and clock_le(v.clock, versions[rival_id].table) then
        dominated = true
        break
      end
    end
    if not dominated then kept[#kept + 1] = v end
  end
  table.sort(kept, version_before)
  local out = {enc_array(2), kind_raw, enc_array(#kept)}
  for _, v in ipairs(kept) do
    out[#out + 1] = enc_array(3)
    out[#out + 1] = (enc_clock(v.table))
    local values = {}
    for value in pairs(v.values) do values[#values + 1] = value end
    table.sort(values, function(x, y)
      return bcmp({s = x, p = 1, n = #x}, {s = y, p = 1, n = #y}) < 0
    end)
    out[#out + 1] = enc_array(#values)
    for _, value in ipairs(values) do out[#out + 1] = enc_bytes(value, true) end
    local names = {}
    for name in pairs(v.deps) do names[#names + 1] = name end
    table.sort(names, function(x, y)
      return bcmp({s = x, p = 1, n = #x}, {s = y, p = 1, n = #y}) < 0
    end)
    out[#out + 1] = enc_map(#names)
    for _, name in ipairs(names) do
      out[#out + 1] = enc_bytes(name, false)
      out[#out + 1] = (enc_clock(v.deps[name]))
    end
  end
  return concat(out)
end

-- ---- the script --------------------------------------------------------------------------------------

local key, index, incoming, mode, channel = KEYS[1], KEYS[2], ARGV[1], ARGV[2] or '', ARGV[3] or KEYS[1]

local function publish(message)
  if mode == 'publish' then
    redis.call('PUBLISH', channel, message)
  elseif mode == 'spublish' then
    redis.call('SPUBLISH', channel, message)
  end
end

local function kind_of(node)
  if node.t ~= 'arr' or node.n == 0 or node.items[1].t ~= 'str' then
    bad('a wire lattice is a list starting with its kind tag')
  end
  return payload(node.items[1])
end

local inc_node = decode_all(incoming)
local kind = kind_of(inc_node)
if kind ~= 'lww' and kind ~= 'max' and kind ~= 'causal' and kind ~= 'set' then
  bad("lattice kind '" .. kind .. "' is not stored in Redis: expected one of causal, lww, max, set")
end

if kind == 'set' then
  local list = fields(inc_node, 'set', 1)[2]
  if list.t ~= 'arr' then bad('set items must be a list on the wire') end
  local members = {}
  for i, item in ipairs(list.items) do
    if item.t ~= 'bin' and item.t ~= 'str' and item.t ~= 'int' then
      bad('set lattice elements must be bytes, str or int')
    end
    members[i] = sub(incoming, item.a, item.b)
  end
  local stored = redis.call('TYPE', key).ok
  if stored ~= 'none' and stored ~= 'set' then
    local cur = redis.call('GET', key)
    bad("cannot merge a 'set' lattice with a '" .. kind_of(decode_all(cur)) .. "' one: the kinds must match")
  end
  local added = 0
  for i = 1, #members, 4000 do -- SADD in bounded batches: unpack() has a stack limit
    added = added + redis.call('SADD', key, unpack(members, i, math.min(i + 3999, #members)))
  end
  if added == 0 then return 0 end
  if index then redis.call('SADD', index, key) end
  publish(incoming)
  return 1
end

local cur = redis.pcall('GET', key)
if type(cur) == 'table' and cur.err then
  bad("cannot merge a '" .. kind .. "' lattice with a 'set' one: the kinds must match")
end

local merged
if cur == false then
  -- validate before the first write: a malformed value must never be stored
  merged = incoming
  if kind == 'lww' then lww_parse(inc_node)
  elseif kind == 'max' then max_parse(inc_node)
  else merged = causal_merge(nil, inc_node, sub(incoming, inc_node.items[1].a, inc_node.items[1].b)) end
elseif cur == incoming and kind ~= 'causal' then
  return 0 -- a resent write: merge is idempotent
else
  local cur_node = decode_all(cur)
  local cur_kind = kind_of(cur_node)
  if cur_kind ~= kind then
    bad("cannot merge a '" .. kind .. "' lattice with a '" .. cur_kind .. "' one: the kinds must match")
  end
  if kind == 'lww' then
    local c, i = lww_parse(cur_node), lww_parse(inc_node)
    if not lww_incoming_wins(c, i) then return 0 end
    merged = incoming
  elseif kind == 'max' then
    local c, i = max_parse(cur_node), max_parse(inc_node)
    if ncmp(i, c) <= 0 then return 0 end
    merged = incoming
  else
    merged = causal_merge(cur_node, inc_node, sub(cur, cur_node.items[1].a, cur_node.items[1].b))
    if merged == cur then return 0 end
  end
end
redis.call('SET', key, merged)
if index then redis.call('SADD', index, key) end
publish(merged)
return 1
