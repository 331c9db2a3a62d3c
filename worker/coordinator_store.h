// The rendezvous Store of one job attempt, kept by the coordinator
// (WorkerService.StoreSet/StoreGet): the ranks of a gang exchange their
// communicator addresses through it without knowing each other beforehand.
#pragma once

#include <memory>
#include <string>

#include "core/comm/store.h"
#include "shrinkray/v1/worker.grpc.pb.h"

namespace shrinkray {

std::shared_ptr<Store> MakeCoordinatorStore(std::shared_ptr<v1::WorkerService::StubInterface> stub,
                                            std::string token, std::string job_id, int attempt);

}  // namespace shrinkray
