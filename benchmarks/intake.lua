-- wrk script: report incidents at door-plate locations, authenticated with $API_KEY.
local points = {}
for line in io.lines(os.getenv("POINTS_FILE")) do
  points[#points + 1] = line
end
local categories = {"dispute", "safety_hazard", "public_security", "rental_housing", "environment", "labour_dispute", "other"}
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("API_KEY")
wrk.headers["Content-Type"] = "application/json"
local i = 0
request = function()
  i = i + 1
  local p = points[(i % #points) + 1]
  local body = string.format('{"category": "%s", "description": "benchmark report %d", "reporter_kind": "rider", %s}',
                             categories[(i % #categories) + 1], i, p)
  return wrk.format("POST", os.getenv("TARGET_PATH") or "/api/v1/incidents", nil, body)
end
