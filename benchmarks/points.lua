-- wrk script: each request looks up a different point from a list (door plates of the sample).
local points = {}
local path = os.getenv("POINTS_FILE")
for line in io.lines(path) do
  points[#points + 1] = line
end
local i = 0
request = function()
  i = i + 1
  local p = points[(i % #points) + 1]
  return wrk.format("GET", "/api/v1/lookup?" .. p)
end
