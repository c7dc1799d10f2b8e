using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Diagnostics;
using Transport.Winsock.Teardown;

namespace Transport.Winsock.Connections;

/// <summary>
/// One accepted connection: a receive loop filling the input pipe and a send loop draining the output
/// pipe, with Kestrel's semantics (ConnectionClosed on the peer's FIN or reset, reset vs abort errors,
/// backpressure at the pipe thresholds). Its end decides the socket's fate: after a FIN both ways the
/// socket goes to the recycler; after an abort, an error or a reset it is closed and never reused.
/// </summary>
internal sealed partial class WinsockConnection : ConnectionContext
{
    private static long s_lastId = DateTime.UtcNow.Ticks;

    private readonly ReusableSocket _socket;
    private readonly WinsockConnectionFactory _factory;
    private readonly long _id;
    private readonly Pipe _input;
    private readonly Pipe _output;
    private readonly CancellationTokenSource _connectionClosedTokenSource = new();
    private readonly TaskCompletionSource _connectionClosedFired = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _sendingEnded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Lock _closeLock = new();
    private CloseState _closeState;
    private Exception? _shutdownReason;
    private bool _receiveEnded;
    private bool _peerFinReceived;
    private volatile bool _peerReset;
    private volatile bool _endSendingGracefully;
    private Task _processingTask = Task.CompletedTask;

    private enum CloseState
    {
        Open,
        FinDeferred,
        FinSent,
        Closed,
    }

    public WinsockConnection(ReusableSocket socket, WinsockConnectionFactory factory)
    {
        _socket = socket;
        _factory = factory;
        _id = Interlocked.Increment(ref s_lastId);
        LocalEndPoint = socket.Socket.LocalEndPoint;
        RemoteEndPoint = socket.Socket.RemoteEndPoint;
        _input = new Pipe(factory.InputOptions);
        _output = new Pipe(factory.OutputOptions);
        Transport = new DuplexPipe(_input.Reader, _output.Writer);
        ConnectionClosed = _connectionClosedTokenSource.Token;
    }

    private Socket Socket => _socket.Socket;

    private ILogger Logger => _factory.Logger;

    public override IDuplexPipe Transport { get; set; }

    public override CancellationToken ConnectionClosed { get; set; }

    public override EndPoint? LocalEndPoint { get; set; }

    public override EndPoint? RemoteEndPoint { get; set; }

    public void Start() => _processingTask = ProcessAsync();

    /// <summary>
    /// With a reason: an abortive close (RST), as in Kestrel's Sockets transport. Without one (Kestrel's
    /// HTTP/1.1 layer passes null when the client's FIN ends the connection): a graceful close, the same
    /// FIN and teardown as when the application completes its output.
    /// </summary>
    public override void Abort(ConnectionAbortedException abortReason)
    {
        if (abortReason is null)
        {
            _endSendingGracefully = true;
        }
        else
        {
            CloseAbortively(abortReason);
        }

        // Ends the send loop, which is waiting on the application's output.
        _output.Reader.CancelPendingRead();
    }

    public override async ValueTask DisposeAsync()
    {
        _input.Reader.Complete();
        _output.Writer.Complete();
        await _processingTask.ConfigureAwait(false);
        _connectionClosedTokenSource.Dispose();
        await base.DisposeAsync().ConfigureAwait(false);
    }

    private async Task ProcessAsync()
    {
        var receiving = ReceiveLoopAsync();
        var sending = SendLoopAsync();
        await receiving.ConfigureAwait(false);
        await sending.ConfigureAwait(false);
        HandOffSocket();
    }

    private async Task ReceiveLoopAsync()
    {
        Exception? error = null;
        try
        {
            var end = await ReceiveAsync().ConfigureAwait(false);
            if (end == ReceiveEnd.ApplicationStoppedReading)
            {
                await DiscardUntilFinAsync().ConfigureAwait(false);
            }
            else if (_factory.HalfCloseTimeout is { } halfCloseTimeout)
            {
                // A half-close: the input ends here, but the connection lives on for sending.
                _input.Writer.Complete();
                await WhileStillSendingAsync(halfCloseTimeout).ConfigureAwait(false);
            }
        }
        catch (SocketException ex) when (SocketErrors.IsReset(ex.SocketErrorCode))
        {
            error = new ConnectionResetException(ex.Message, ex);
            OnPeerReset();
        }
        catch (Exception ex) when (IsLocalAbort(ex))
        {
            // This side closed the socket: an abort, a drain timeout, or a send-side failure.
            error = new ConnectionAbortedException("The connection was closed by the transport.", ex);
        }
        catch (Exception ex)
        {
            error = new IOException(ex.Message, ex);
            Logger.ConnectionError(ConnectionId, ex);
        }
        finally
        {
            lock (_closeLock)
            {
                _receiveEnded = true;
            }

            // A drain that is over in time disarms its deadline; one that expired has closed the socket.
            _socket.Deadline.TryDisarm();
            _input.Writer.Complete(_shutdownReason ?? error);
            FireConnectionClosed();
        }

        await _connectionClosedFired.Task.ConfigureAwait(false);
    }

    private async Task WhileStillSendingAsync(TimeSpan timeout)
    {
        try
        {
            await _sendingEnded.Task.WaitAsync(timeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // The application kept the connection past the bound: ConnectionClosed fires now.
        }
    }

    private enum ReceiveEnd
    {
        PeerFin,
        ApplicationStoppedReading,
    }

    private async Task<ReceiveEnd> ReceiveAsync()
    {
        var writer = _input.Writer;
        while (true)
        {
            // Wait for data before taking a buffer, so an idle connection holds no memory.
            await _socket.Receiver.WaitForDataAsync(Socket).ConfigureAwait(false);

            var buffer = writer.GetMemory(_factory.MinReceiveSize);
            var received = await _socket.Receiver.ReceiveAsync(Socket, buffer).ConfigureAwait(false);
            if (received == 0)
            {
                OnPeerFin();
                return ReceiveEnd.PeerFin;
            }

            writer.Advance(received);
            var flush = writer.FlushAsync();
            var paused = !flush.IsCompleted;
            if (paused)
            {
                Logger.ConnectionPause(ConnectionId);
            }

            var result = await flush.ConfigureAwait(false);
            if (paused)
            {
                Logger.ConnectionResume(ConnectionId);
            }

            if (result.IsCompleted || result.IsCanceled)
            {
                return ReceiveEnd.ApplicationStoppedReading;
            }
        }
    }

    /// <summary>
    /// The application will read no more, but the socket can only be reused once the peer has closed its
    /// side; and closing with unread data would send an RST. So read and drop until the peer's FIN.
    /// </summary>
    private async Task DiscardUntilFinAsync()
    {
        using var scratch = _factory.MemoryPool.Rent();
        while (await _socket.Receiver.ReceiveAsync(Socket, scratch.Memory).ConfigureAwait(false) > 0)
        {
        }

        OnPeerFin();
    }

    private async Task SendLoopAsync()
    {
        var reader = _output.Reader;
        Exception? failure = null;
        var completed = false;
        try
        {
            while (true)
            {
                var result = await reader.ReadAsync().ConfigureAwait(false);
                if (result.IsCanceled)
                {
                    completed = _endSendingGracefully;
                    break;
                }

                var buffer = result.Buffer;
                if (!buffer.IsEmpty)
                {
                    await _socket.Sender.SendAsync(Socket, buffer).ConfigureAwait(false);
                }

                reader.AdvanceTo(buffer.End);
                if (result.IsCompleted)
                {
                    completed = true;
                    break;
                }
            }
        }
        catch (SocketException ex) when (SocketErrors.IsReset(ex.SocketErrorCode))
        {
            OnPeerReset();
            failure = new ConnectionResetException(ex.Message, ex);
        }
        catch (Exception ex) when (IsLocalAbort(ex))
        {
            // Aborted: the socket is already closed.
        }
        catch (Exception ex)
        {
            // The application completed its output with an error, or the send failed.
            Logger.ConnectionError(ConnectionId, ex);
            failure = ex;
        }
        finally
        {
            if (completed)
            {
                EndOutput();
            }
            else if (failure is not null && !_peerReset)
            {
                CloseAbortively(new ConnectionAbortedException(failure.Message, failure));
            }

            reader.Complete(failure is ConnectionResetException ? null : failure);
            // If the receive loop is held by backpressure, let it go: nobody will read any more.
            _input.Writer.CancelPendingFlush();
            _sendingEnded.TrySetResult();
        }
    }

    private static bool IsLocalAbort(Exception ex)
        => ex is ObjectDisposedException || (ex is SocketException se && SocketErrors.IsLocalAbort(se.SocketErrorCode));
}
