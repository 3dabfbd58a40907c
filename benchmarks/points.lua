-- wrk script: each request looks up a different point from a list (door plates of the sample),
-- authenticated with the API key in $API_KEY.
local points = {}
for line in io.lines(os.getenv("POINTS_FILE")) do
  points[#points + 1] = line
end
wrk.headers["Authorization"] = "Bearer " .. os.getenv("API_KEY")
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/api/v1/lookup?" .. points[(i % #points) + 1])
end
