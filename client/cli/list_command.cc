// `shrinkray list`: jobs, newest first, as a table (or JSON); one page, or every
// page with --all.
#include <cstdio>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cli/commands.h"
#include "client/cli/job_printer.h"
#include "client/cli/rpc_client.h"
#include "core/util/status_macros.h"

namespace shrinkray::cli {

absl::Status RunList(const Args& args) {
  SR_ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args, WithConnectionFlags({"state", "page-size", "page-token"}),
                                                {"all", "json"}));
  v1::ListJobsRequest request;
  if (flags.Has("state")) {
    SR_ASSIGN_OR_RETURN(v1::JobState state, ParseJobState(flags.Get("state", "")));
    request.set_state(state);
  }
  SR_ASSIGN_OR_RETURN(long page_size, flags.GetInt("page-size", 0));
  if (page_size < 0 || page_size > 1000) {
    return absl::InvalidArgumentError(absl::StrCat("--page-size must be in 1..1000, got ", page_size));
  }
  request.set_page_size(static_cast<int32_t>(page_size));
  request.set_page_token(flags.Get("page-token", ""));
  SR_ASSIGN_OR_RETURN(ConnectionOptions options, ConnectionOptionsFromFlags(flags));
  CompressionClient client(options);

  // Every page is fetched before printing so the table's columns line up.
  v1::ListJobsResponse all;
  while (true) {
    SR_ASSIGN_OR_RETURN(v1::ListJobsResponse page, client.ListJobs(request));
    for (v1::Job& job : *page.mutable_jobs()) *all.add_jobs() = std::move(job);
    all.set_next_page_token(page.next_page_token());
    if (!flags.Has("all") || page.next_page_token().empty()) break;
    if (page.next_page_token() == request.page_token()) {
      return absl::InternalError("the coordinator returned the same page token twice");
    }
    request.set_page_token(page.next_page_token());
  }
  if (flags.Has("json")) {
    SR_ASSIGN_OR_RETURN(std::string json, ToJson(all));
    std::fputs(json.c_str(), stdout);
    return absl::OkStatus();
  }
  const std::vector<v1::Job> jobs(all.jobs().begin(), all.jobs().end());
  std::fputs(FormatJobTable(jobs).c_str(), stdout);
  if (!all.next_page_token().empty()) {
    // On stderr so the table on stdout stays machine-readable.
    std::fprintf(stderr, "more: --page-token %s (or --all)\n", all.next_page_token().c_str());
  }
  return absl::OkStatus();
}

}  // namespace shrinkray::cli
