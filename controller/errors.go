package controller

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	"github.com/tvd-dev/tvd/store"
)

// apiError is an error with the API code it maps to. Its message is safe to
// show the caller: it never carries internal detail.
type apiError struct {
	code connect.Code
	msg  string
}

func (e *apiError) Error() string { return e.msg }

func errInvalid(format string, args ...any) error {
	return &apiError{connect.CodeInvalidArgument, fmt.Sprintf(format, args...)}
}

func errDenied(format string, args ...any) error {
	return &apiError{connect.CodePermissionDenied, fmt.Sprintf(format, args...)}
}

func errUnauthenticated(format string, args ...any) error {
	return &apiError{connect.CodeUnauthenticated, fmt.Sprintf(format, args...)}
}

func errNotFound(format string, args ...any) error {
	return &apiError{connect.CodeNotFound, fmt.Sprintf(format, args...)}
}

func errExists(format string, args ...any) error {
	return &apiError{connect.CodeAlreadyExists, fmt.Sprintf(format, args...)}
}

func errPrecondition(format string, args ...any) error {
	return &apiError{connect.CodeFailedPrecondition, fmt.Sprintf(format, args...)}
}

// toConnect maps an error to the API: the one place where internal errors
// become codes. Errors that are not apiErrors are logged and reported as
// internal, without their text.
func (c *Controller) toConnect(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		return connect.NewError(ae.code, errors.New(ae.msg))
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, errors.New("canceled"))
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("deadline exceeded"))
	case errors.Is(err, store.ErrConflict):
		return connect.NewError(connect.CodeAborted, errors.New("concurrent change; retry"))
	}
	c.log.ErrorContext(ctx, "internal error", "op", op, "err", err)
	return connect.NewError(connect.CodeInternal, fmt.Errorf("%s: internal error; see the controller's log", op))
}
