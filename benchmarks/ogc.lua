-- wrk script for the OGC API benchmark (ogc.py): GET the path of $OGC_PATH, with the API key of
-- $API_KEY when set (geo_service; tipg is served without authentication) and Accept-Encoding
-- $ACCEPT_ENCODING when set (what an HTTP client such as GDAL's sends).
local key = os.getenv("API_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
local encoding = os.getenv("ACCEPT_ENCODING")
if encoding and encoding ~= "" then
  wrk.headers["Accept-Encoding"] = encoding
end
local path = os.getenv("OGC_PATH")
request = function()
  return wrk.format("GET", path)
end
