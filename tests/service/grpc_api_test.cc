// The public API over real gRPC on loopback: one test per status code the
// API documents, the token on every RPC but health, and WatchJob's stream.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "grpcpp/create_channel.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/server_builder.h"
#include "server/compression_service.h"
#include "server/coordinator.h"
#include "server/worker_service.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "test_data.h"

namespace shrinkray {
namespace {

constexpr const char* kToken = "s3cret-token";

class GrpcApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = testing::MakeTempDir("grpc_api");
    auto store = JobStore::Open(root_ / "jobs.sqlite");
    ASSERT_TRUE(store.ok()) << store.status();
    auto paths = PathPolicy::Create({root_});
    ASSERT_TRUE(paths.ok());
    CoordinatorOptions options;
    options.max_queued_jobs = 2;
    options.limits.max_workers_per_job = 2;
    auto c = Coordinator::Create(std::move(*store), std::move(*paths), options, nullptr);
    ASSERT_TRUE(c.ok()) << c.status();
    coordinator_ = std::move(*c);
    compression_ = std::make_unique<CompressionServiceImpl>(coordinator_.get(), kToken);
    workers_ = std::make_unique<WorkerServiceImpl>(coordinator_.get(), kToken);
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(compression_.get());
    builder.RegisterService(workers_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
    stub_ = v1::CompressionService::NewStub(channel_);
  }

  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }

  std::unique_ptr<grpc::ClientContext> Context(const std::string& token = kToken) {
    auto context = std::make_unique<grpc::ClientContext>();
    if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return context;
  }

  v1::JobSpec Spec() const {
    v1::JobSpec spec;
    spec.set_model_path((root_ / "model").string());
    spec.set_recipe_yaml("[{rtn: {bits: 4}}]");
    spec.mutable_calibration()->set_path((root_ / "calib.txt").string());
    spec.set_output_path((root_ / "out").string());
    return spec;
  }

  grpc::Status Submit(const v1::JobSpec& spec, v1::SubmitJobResponse* response, const std::string& token = kToken) {
    v1::SubmitJobRequest request;
    *request.mutable_spec() = spec;
    return stub_->SubmitJob(Context(token).get(), request, response);
  }

  std::filesystem::path root_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<CompressionServiceImpl> compression_;
  std::unique_ptr<WorkerServiceImpl> workers_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::CompressionService::Stub> stub_;
};

TEST_F(GrpcApiTest, MissingOrBadTokenIsUnauthenticated) {
  v1::SubmitJobResponse response;
  grpc::Status s = Submit(Spec(), &response, "");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  s = Submit(Spec(), &response, "wrong-token");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(s.error_message(), "bad bearer token");
  v1::GetJobRequest get;
  get.set_job_id("x");
  v1::GetJobResponse got;
  EXPECT_EQ(stub_->GetJob(Context("nope").get(), get, &got).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // Workers need the token too.
  auto worker_stub = v1::WorkerService::NewStub(channel_);
  auto context = Context("nope");
  auto stream = worker_stub->Connect(context.get());
  v1::ConnectRequest hello;
  hello.mutable_hello()->set_name("w");
  hello.mutable_hello()->mutable_capabilities()->set_device("cpu");
  stream->Write(hello);
  v1::ConnectResponse r;
  EXPECT_FALSE(stream->Read(&r));
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(GrpcApiTest, HealthNeedsNoToken) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(health->Check(&context, request, &response).ok());
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(GrpcApiTest, BadSpecIsInvalidArgumentNamingTheField) {
  v1::JobSpec spec = Spec();
  spec.set_recipe_yaml("[{gptq: {bits: 9}}]");
  v1::SubmitJobResponse response;
  grpc::Status s = Submit(spec, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("spec.recipe_yaml"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("bits"), std::string::npos) << s.error_message();
}

TEST_F(GrpcApiTest, PathOutsideAllowedRootsIsPermissionDenied) {
  v1::JobSpec spec = Spec();
  spec.set_output_path("/tmp/../etc/out");
  v1::SubmitJobResponse response;
  EXPECT_EQ(Submit(spec, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);  // ".." refused outright
  spec.set_output_path("/etc/shrinkray-out");
  grpc::Status s = Submit(spec, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(s.error_message().find("spec.output_path"), std::string::npos) << s.error_message();
}

TEST_F(GrpcApiTest, NotFoundAndFailedPrecondition) {
  v1::GetJobRequest get;
  get.set_job_id("job-missing");
  v1::GetJobResponse got;
  grpc::Status s = stub_->GetJob(Context().get(), get, &got);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(s.error_message(), "job job-missing not found");

  v1::SubmitJobResponse submitted;
  ASSERT_TRUE(Submit(Spec(), &submitted).ok());
  v1::CancelJobRequest cancel;
  cancel.set_job_id(submitted.job().id());
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(stub_->CancelJob(Context().get(), cancel, &cancelled).ok());
  EXPECT_EQ(cancelled.job().state(), v1::JOB_STATE_CANCELLED);
  s = stub_->CancelJob(Context().get(), cancel, &cancelled);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(GrpcApiTest, QueueFullAndTooManyWorkersAreResourceExhausted) {
  v1::SubmitJobResponse response;
  v1::JobSpec spec = Spec();
  spec.set_num_workers(3);
  grpc::Status s = Submit(spec, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("num_workers"), std::string::npos) << s.error_message();
  ASSERT_TRUE(Submit(Spec(), &response).ok());
  ASSERT_TRUE(Submit(Spec(), &response).ok());
  s = Submit(Spec(), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(GrpcApiTest, WatchStreamsSnapshotThenEventsUntilFinal) {
  v1::SubmitJobResponse submitted;
  ASSERT_TRUE(Submit(Spec(), &submitted).ok());
  const std::string id = submitted.job().id();
  auto context = Context();
  v1::WatchJobRequest request;
  request.set_job_id(id);
  auto reader = stub_->WatchJob(context.get(), request);
  v1::WatchJobResponse message;
  ASSERT_TRUE(reader->Read(&message));
  ASSERT_TRUE(message.has_job());
  EXPECT_EQ(message.job().state(), v1::JOB_STATE_QUEUED);
  ASSERT_TRUE(coordinator_->CancelJob(id, "test").ok());
  ASSERT_TRUE(reader->Read(&message));
  ASSERT_TRUE(message.has_event());
  EXPECT_EQ(message.event().state_change().state(), v1::JOB_STATE_CANCELLED);
  EXPECT_FALSE(reader->Read(&message));
  EXPECT_TRUE(reader->Finish().ok());

  // Unknown job: NOT_FOUND on the stream.
  auto context2 = Context();
  request.set_job_id("job-missing");
  auto missing = stub_->WatchJob(context2.get(), request);
  EXPECT_FALSE(missing->Read(&message));
  EXPECT_EQ(missing->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace shrinkray
