// Package protogen pins the versions of the protocol buffer tools (buf,
// protoc-gen-go, protoc-gen-go-grpc) and of grpcurl. It is a module of its
// own, outside go.work, so that their dependencies do not change the
// versions the services build with. `make proto` builds them into .tools/.
package protogen
