using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Transport.Winsock.Diagnostics;
using Transport.Winsock.Engines;
using Transport.Winsock.Teardown;

namespace Transport.Winsock.Connections;

/// <summary>
/// One accepted connection: a receive loop filling the input pipe and a send loop draining the output
/// pipe, with Kestrel's semantics (ConnectionClosed on the peer's FIN or reset, reset vs abort errors,
/// backpressure at the pipe thresholds). Its end decides the socket's fate: after a FIN both ways the
/// socket goes to the recycler; after an abort, an error or a reset it is closed and never reused.
/// <para>
/// The object is pooled by its listener and carries one connection after another: <see cref="Attach"/>
/// readies it for a socket, <see cref="Start"/> gives each of its two long-lived loops (receive, send) a
/// turn, and the awaiter of <see cref="DisposeAsync"/> hands it back. Pipes, signals, feature state and
/// the loops' state machines are allocated once per object, so a steady stream of short connections
/// allocates next to nothing here.
/// </para>
/// </summary>
internal sealed partial class WinsockConnection : ConnectionContext, IThreadPoolWorkItem, IDuplexPipe
{
    private static long s_lastId = DateTime.UtcNow.Ticks;

    private readonly WinsockConnectionFactory _factory;
    private readonly InputPipe _input;
    private readonly OutputPipe _output;
    private readonly ReusableSignal _receiveTurn = new(runContinuationsAsynchronously: false);
    private readonly ReusableSignal _sendTurn = new(runContinuationsAsynchronously: false);
    private readonly ReusableSignal _finished;
    private readonly Lock _closeLock = new();
    // The engine's side: receives, sends, FIN, close and the socket's hand-off.
    private readonly ConnectionIo _io;
    // Drain and deferred-FIN deadlines; armed with the connection id, see WinsockConnection.Close. Made
    // at its first arming, under _closeLock (see Deadline): an idle keep-alive connection never has one.
    private SocketDeadline? _deadline;
    // On the pinned heap and marked so: an engine that pins a receive buffer (io_uring) pins this one, once
    // per connection, without a GC handle.
    private readonly Memory<byte> _probe = System.Runtime.InteropServices.MemoryMarshal.CreateFromPinnedArray(GC.AllocateArray<byte>(1, pinned: true), 0, 1);
    private long _id;
    private TaskCompletionSource? _sendingEnded;
    private CloseState _closeState;
    private Exception? _shutdownReason;
    private bool _receiveEnded;
    private bool _peerFinReceived;
    private volatile bool _peerReset;
    private volatile bool _endSendingGracefully;
    private volatile bool _outputEnded;
    private int _loopsRunning;
    private bool _started;
    private bool _disposed;

    private enum CloseState
    {
        Open,
        FinDeferred,
        FinSent,
        FinWithClose,
        Closed,
    }

    public WinsockConnection(WinsockConnectionFactory factory, ConnectionIo io)
    {
        _factory = factory;
        _io = io;
        var (inputOptions, outputOptions) = factory.NextPipeOptions();
        _input = new InputPipe(inputOptions);
        _output = new OutputPipe(outputOptions);
        // The connection is its own IDuplexPipe: one object fewer per connection.
        Transport = this;
        // The server's continuation after DisposeAsync runs inline, on the loop that finished last, when
        // that is a thread pool thread: neither loop touches the connection after OnLoopDone, and it saves a
        // hop. On an engine's thread it is handed to the thread pool (OnLoopDone).
        _finished = new ReusableSignal(runContinuationsAsynchronously: false, afterResult: Recycle);
        _ = ReceiveLoopAsync();
        _ = SendLoopAsync();
    }

    /// <summary>Readies this object, new or from the pool, for the socket its engine side has just been given.</summary>
    public void Attach()
    {
        _id = Interlocked.Increment(ref s_lastId);
        // A deadline still armed for this object's previous connection ends here; one that fires anyway
        // carries the old id and is ignored.
        _deadline?.TryDisarm();
        // As far as they can still be read: a peer that resets right after connecting can make them
        // fail, and such a connection still goes to the server, where it counts in Kestrel's metrics and
        // logs and ends at its first read. (Kestrel's Sockets transport drops one whose endpoint or
        // NoDelay it cannot read or set; this one hands over every connection it accepted.)
        LocalEndPoint = _factory.LocalEndPoint ?? _io.LocalEndPoint;
        RemoteEndPoint = _io.RemoteEndPoint;
        Transport = this;
        _sendingEnded = _factory.HalfCloseTimeout is null ? null : new(TaskCreationOptions.RunContinuationsAsynchronously);
        _closeState = CloseState.Open;
        _shutdownReason = null;
        _receiveEnded = false;
        _peerFinReceived = false;
        _passiveClose = false;
        _peerReset = false;
        _endSendingGracefully = false;
        _outputEnded = false;
        _resetSeen = 0;
        _handedOff = false;
        _started = false;
        _disposed = false;
        ResetFeatures();
    }

    /// <summary>Ends a pooled object's loops when the pool has no room for it, and frees its event args and timer.</summary>
    public void Retire()
    {
        _receiveTurn.Set(false);
        _sendTurn.Set(false);
        _io.Dispose();
        _deadline?.Dispose();
    }

    /// <summary>The engine's side of this connection; internal for tests (no application may hold it).</summary>
    internal ConnectionIo Io => _io;

    private ILogger Logger => _factory.Logger;

    public override IDuplexPipe Transport { get; set; }

    PipeReader IDuplexPipe.Input => _input;

    PipeWriter IDuplexPipe.Output => _output;

    /// <summary>The deadline, made at its first arming; only under _closeLock.</summary>
    private SocketDeadline Deadline => _deadline ??= new SocketDeadline();

    public override EndPoint? LocalEndPoint { get; set; }

    public override EndPoint? RemoteEndPoint { get; set; }

    /// <summary>Starts both loops on this connection; they run inline until they first wait for the socket or the application.</summary>
    /// <remarks>
    /// An engine whose accepts complete on a thread of its own (io_uring) starts a connection there, before
    /// it is queued for the server, so that its first receive is submitted without a hop; the listener's
    /// call then does nothing.
    /// </remarks>
    public void Start()
    {
        if (_started)
        {
            return;
        }

        _started = true;
        _loopsRunning = 2;
        _receiveTurn.Set();
        _sendTurn.Set();
    }

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
        _output.CancelPendingRead();
    }

    /// <summary>
    /// Ends the connection for the server. The returned task completes once both loops are done and the
    /// socket is handed off; taking its result returns this object to the pool, so it must be awaited once
    /// and the connection not touched after.
    /// </summary>
#pragma warning disable CA2215 // ConnectionContext's own DisposeAsync does nothing; the object is recycled instead.
    public override ValueTask DisposeAsync()
#pragma warning restore CA2215
    {
        if (_disposed)
        {
            return ValueTask.CompletedTask;
        }

        _disposed = true;
        if (_started && _factory.EndTimeout is { } endTimeout)
        {
            // Armed before the output completes: the FIN, the deferral or the drain re-arms the one deadline
            // once the output is sent, so this only fires on a send that never finishes.
            lock (_closeLock)
            {
                if (_closeState == CloseState.Open)
                {
                    Deadline.Arm(endTimeout, s_onEndExpired, this, _id);
                }
            }
        }

        _input.Complete();
        _output.Complete();
        if (!_started)
        {
            // The loops never ran (an accepted connection nobody took): their pipe ends are completed
            // here, so that the pipes can be reset for the next connection.
            _input.CompleteWriter();
            _output.CompleteReader();
            Recycle();
            return ValueTask.CompletedTask;
        }

        return _finished.WaitWithoutResultAsync();
    }

    /// <summary>Queued by <see cref="OnLoopDone"/> from a ring thread: DisposeAsync completes on the thread pool.</summary>
    void IThreadPoolWorkItem.Execute() => _finished.Set();

    /// <summary>Both loops are done with this connection: hand the socket off and let DisposeAsync complete.</summary>
    private void OnLoopDone()
    {
        if (Interlocked.Decrement(ref _loopsRunning) == 0)
        {
            _factory.OnConnectionEnded(closed: HandOffSocket());
            if (EngineThread.IsCurrent && !_factory.InlineScheduling)
            {
                // Kestrel's continuation after DisposeAsync (its connection's end: logs, metrics, EventSource
                // and their listeners) must not run on a ring thread, unless the application chose inline.
                // The connection is the work item: no allocation per connection for the hop.
                ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
            }
            else
            {
                _finished.Set();
            }
        }
    }

    /// <summary>
    /// After the server's DisposeAsync: every pipe end is complete, so everything can start over. Every
    /// object goes back to the pool through here, so <see cref="Attach"/> finds ConnectionClosed reset.
    /// </summary>
    private void Recycle()
    {
        ResetConnectionClosed();
        _input.Reset();
        _output.Reset();
        _factory.Return(this);
    }

    /// <summary>
    /// The receive side of every connection this object carries, one turn per connection: data into the
    /// input pipe until the peer's FIN; if the application stops reading first, drain and discard until
    /// the FIN (the socket can only be reused once the peer has closed, and closing on unread data would
    /// send an RST); with half-close allowed, keep the connection while the application still sends.
    /// </summary>
    private async Task ReceiveLoopAsync()
    {
        while (await _receiveTurn.WaitAsync().ConfigureAwait(false))
        {
            Exception? error = null;
            var closedHandedOff = false;
            try
            {
                var writer = _input;
                var applicationStoppedReading = false;
                var probeForFin = true;
                while (true)
                {
                    // Wait for data before taking a buffer, so an idle connection holds no memory
                    // (unless WaitForDataBeforeAllocatingBuffer is off).
                    if (_factory.WaitForData)
                    {
                        await _io.WaitForDataAsync().ConfigureAwait(false);
                    }

                    int received;
                    if (_outputEnded && probeForFin)
                    {
                        // Once the output has ended, what arrives next is most likely the peer's FIN: a
                        // one-byte probe takes it instead of pipe memory, because a pipe completed while it
                        // holds an empty write segment drops that segment rather than pooling it (an
                        // allocation per connection). A byte that does arrive goes into the pipe as usual,
                        // and the rest of this connection's input is received the usual way.
                        received = await _io.ReceiveAsync(_probe).ConfigureAwait(false);
                        if (received > 0)
                        {
                            _probe.Span[..received].CopyTo(writer.GetSpan(received));
                            probeForFin = false;
                        }
                    }
                    else
                    {
                        received = await _io.ReceiveAsync(writer.GetMemory(_factory.MinReceiveSize)).ConfigureAwait(false);
                    }

                    if (received == 0)
                    {
                        break;
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
                        applicationStoppedReading = true;
                        break;
                    }
                }

                if (applicationStoppedReading)
                {
                    using var scratch = _factory.MemoryPool.Rent();
                    while (await _io.ReceiveAsync(scratch.Memory).ConfigureAwait(false) > 0)
                    {
                    }
                }

                OnPeerFin();
                if (!applicationStoppedReading && _sendingEnded is not null)
                {
                    // A half-close: the input ends here, but the connection lives on for sending, bounded.
                    _input.CompleteWriter();
                    try
                    {
                        await _sendingEnded.Task.WaitAsync(_factory.HalfCloseTimeout!.Value).ConfigureAwait(false);
                    }
                    catch (TimeoutException)
                    {
                        // The application kept the connection past the bound: ConnectionClosed fires now.
                    }
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
                _deadline?.TryDisarm();
                closedHandedOff = CompleteInputAndFireConnectionClosed(_shutdownReason ?? error);
            }

            // Handed off: the work item that runs the callbacks ends this loop's turn after them, so that
            // the server's DisposeAsync never completes (and this object never carries another connection)
            // before every ConnectionClosed callback has run, as with Kestrel's Sockets transport.
            if (!closedHandedOff)
            {
                OnLoopDone();
            }
        }
    }

    /// <summary>The send side of every connection this object carries, one turn per connection.</summary>
    private async Task SendLoopAsync()
    {
        while (await _sendTurn.WaitAsync().ConfigureAwait(false))
        {
            var output = _output;
            Exception? failure = null;
            var completed = false;
            try
            {
                while (true)
                {
                    var result = await output.ReadAsync().ConfigureAwait(false);
                    if (result.IsCanceled)
                    {
                        completed = _endSendingGracefully;
                        break;
                    }

                    var buffer = result.Buffer;
                    if (!buffer.IsEmpty)
                    {
                        await _io.SendAsync(buffer).ConfigureAwait(false);
                    }

                    output.AdvanceToEnd();
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

                output.CompleteReader(failure is ConnectionResetException ? null : failure);
                if (!completed)
                {
                    // Aborted or failed: if the receive loop is held by backpressure, let it go, nobody
                    // will read any more. After a graceful end the application may still be reading its
                    // input (our FIN only ends the output), so the receive loop carries on delivering it;
                    // the server's DisposeAsync completes the input, which releases a held flush too.
                    _input.CancelPendingFlush();
                }
                _sendingEnded?.TrySetResult();
            }

            OnLoopDone();
        }
    }

    private static bool IsLocalAbort(Exception ex)
        => ex is ObjectDisposedException || (ex is SocketException se && SocketErrors.IsLocalAbort(se.SocketErrorCode));
}
