// What the cmoe-serve end-to-end tests (server_test, server_limits_test) share besides the child
// process (server_process.h): models prepared from the shared ones with the command-line tools,
// and the Prometheus /metrics endpoint, scraped over a plain socket and parsed.
//
//   ScratchDir scratch;
//   ASSERT_TRUE(Succeeded(CarveTinyStories("S2A2E8", scratch.Join("carved"))));
//   ...
//   std::vector<Sample> samples = ParseSamples(Scrape(server.metrics_port()));
//   EXPECT_EQ(Value(samples, "cmoe_running_requests"), 0.0);
#ifndef CMOE_TESTS_SERVER_SERVER_FIXTURES_H_
#define CMOE_TESTS_SERVER_SERVER_FIXTURES_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tests/tools/subprocess.h"

namespace cmoe::testing {

// --- models ---

// The shared tinystories-656k model and its calibration text both exist (else carving tests skip).
bool HaveCarveInputs();

// cmoe-carve of the shared tinystories-656k into `out` with `config` (e.g. "S2A2E8"), calibrated
// on two 64-token windows of tinystories_val.txt (well under a second); the tool's result.
SubprocessResult CarveTinyStories(const std::string& config, const std::string& out);

// --- metrics ---

// GET http://127.0.0.1:<port>/metrics over a plain socket; the body, or "" on failure.
// A plain HTTP/1.0 GET of http://127.0.0.1:<port><target> (the body ends at close; 10 s
// receive timeout). status 0: no HTTP response.
struct HttpResponse {
  int status = 0;
  std::string body;
};
HttpResponse HttpGet(int port, const std::string& target);

// GET /metrics: the body of a 200 answer, else "".
std::string Scrape(int port);

// One sample of the text exposition format.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

std::vector<Sample> ParseSamples(const std::string& text);

// The value of the series `name` with (at least) `labels`; nullopt when there is none.
std::optional<double> Value(const std::vector<Sample>& samples, const std::string& name,
                            const std::map<std::string, std::string>& labels = {});

}  // namespace cmoe::testing

#endif  // CMOE_TESTS_SERVER_SERVER_FIXTURES_H_
