using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using System.Threading.Tasks.Sources;
using Microsoft.Extensions.Logging;
using Transport.Winsock.Diagnostics;
using Transport.Winsock.Engines;
using Transport.Winsock.Teardown;

namespace Transport.Winsock.Connections;

/// <summary>
/// One accepted connection: a receive side filling the input pipe and a send side draining the output
/// pipe, with Kestrel's semantics (ConnectionClosed on the peer's FIN or reset, reset vs abort errors,
/// backpressure at the pipe thresholds). Its end decides the socket's fate: after a FIN both ways the
/// socket goes to the recycler; after an abort, an error or a reset it is closed and never reused.
/// <para>
/// The object is pooled by its listener and carries one connection after another: <see cref="Attach"/>
/// readies it for a socket, <see cref="Start"/> runs its two sides (receive, send), and the awaiter of
/// <see cref="DisposeAsync"/> hands it back. Pipes, feature state and the sides' two continuations are
/// allocated once per object, so a steady stream of short connections allocates next to nothing here;
/// the sides' state is fields of this object, so an idle connection holds no state machine box.
/// </para>
/// </summary>
internal sealed partial class WinsockConnection : ConnectionContext, IThreadPoolWorkItem, IDuplexPipe, IValueTaskSource
{
    private static long s_lastId = DateTime.UtcNow.Ticks;

    private readonly WinsockConnectionFactory _factory;
    private readonly InputPipe _input;
    private readonly OutputPipe _output;
    // What DisposeAsync returns: set once both sides are done; taking its result recycles this object.
    private ManualResetValueTaskSourceCore<bool> _finished;
    // The connection's one lock: its close state's, and both pipes' (a hold is a few fields long, never
    // around a wait or a continuation, and the lock is reentrant).
    private readonly Lock _closeLock = new();
    // The engine's side: receives, sends, FIN, close and the socket's hand-off.
    private readonly ConnectionIo _io;
    // Drain and deferred-FIN deadlines; armed with the connection id, see WinsockConnection.Close. Made
    // at its first arming, under _closeLock (see Deadline): an idle keep-alive connection never has one.
    private SocketDeadline? _deadline;
    // The FIN probe's byte, made at this object's first probe: a connection object that has not ended a
    // connection yet holds none. On the pinned heap and marked so (Probe): an engine that pins a receive
    // buffer (io_uring) pins this one without a GC handle.
    private byte[]? _probeBuffer;
    private long _id;
    // Made only when the peer half-closes while this side still sends (HalfCloseTimeout set): an idle
    // connection holds no Task for it. _sendEnded and it are read and set under _closeLock.
    private TaskCompletionSource? _sendingEnded;
    private bool _sendEnded;
    private CloseState _closeState;
    private Exception? _shutdownReason;
    private bool _receiveEnded;
    private bool _peerFinReceived;
    private volatile bool _peerReset;
    private volatile bool _endSendingGracefully;
    private volatile bool _outputEnded;
    private int _loopsRunning;
    private bool _started;
    private int _disposed;
    // Set by each side as it begins to end (EndReceive, EndSend): a fault that escapes a side after that
    // does not end it a second time (see RunReceiveGuarded).
    private bool _receiveEnding;
    private bool _sendEnding;

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
        _input = new InputPipe(inputOptions, _closeLock);
        _output = new OutputPipe(outputOptions, _closeLock);
        // The connection is its own IDuplexPipe: one object fewer per connection.
        Transport = this;
        // The server's continuation after DisposeAsync runs inline, on the side that finished last, when
        // that is a thread pool thread: neither side touches the connection after OnLoopDone, and it saves a
        // hop. On an engine's thread it is handed to the thread pool (OnLoopDone).
        _finished = new ManualResetValueTaskSourceCore<bool> { RunContinuationsAsynchronously = false };
    }

    /// <summary>Readies this object, new or from the pool, for the socket its engine side has just been given.</summary>
    public void Attach()
    {
        lock (_closeLock)
        {
            // Under the lock the deadline callbacks take: one of the previous connection's that fires now
            // sees either the old id or the new one with the new state, never the new state under the old
            // id (which would abort this connection). A deadline still armed ends here; one that fires
            // anyway carries the old id and is ignored.
            _id = Interlocked.Increment(ref s_lastId);
            _closeState = CloseState.Open;
            _deadline?.TryDisarm();
        }

        // As far as they can still be read: a peer that resets right after connecting can make them
        // fail, and such a connection still goes to the server, where it counts in Kestrel's metrics and
        // logs and ends at its first read. (Kestrel's Sockets transport drops one whose endpoint or
        // NoDelay it cannot read or set; this one hands over every connection it accepted.)
        LocalEndPoint = _factory.LocalEndPoint ?? _io.LocalEndPoint;
        RemoteEndPoint = _io.RemoteEndPoint;
        Transport = this;
        _sendingEnded = null;
        _sendEnded = false;
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
        _disposed = 0;
        ResetFeatures();
    }

    /// <summary>Frees a pooled object's engine side and timer when the pool has no room for it.</summary>
    public void Retire()
    {
        _io.Dispose();
        _deadline?.Dispose();
    }

    /// <summary>The engine's side of this connection; internal for tests (no application may hold it).</summary>
    internal ConnectionIo Io => _io;

    private ILogger Logger => _factory.Logger;

    private Memory<byte> Probe => System.Runtime.InteropServices.MemoryMarshal.CreateFromPinnedArray(_probeBuffer ??= GC.AllocateArray<byte>(1, pinned: true), 0, 1);

    public override IDuplexPipe Transport { get; set; }

    PipeReader IDuplexPipe.Input => _input;

    PipeWriter IDuplexPipe.Output => _output;

    /// <summary>The deadline, made at its first arming; only under _closeLock.</summary>
    private SocketDeadline Deadline => _deadline ??= new SocketDeadline();

    public override EndPoint? LocalEndPoint { get; set; }

    public override EndPoint? RemoteEndPoint { get; set; }

    /// <summary>Starts both sides of this connection; they run inline until they first wait for the socket or the application.</summary>
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
        _receiveStep = ReceiveStep.WaitForData;
        _sendStep = SendStep.Read;
        _applicationStoppedReading = false;
        _probeForFin = true;
        _receiveEnding = false;
        _sendEnding = false;
        RunReceiveGuarded();
        RunSendGuarded();
    }

    // The sides run as raw continuations of the engine's operations and of the pipes, on a ring thread, an
    // engine's completion thread or the thread pool: nothing may escape them (a ring would fail with every
    // connection on it, the thread pool would end the process, and this connection's DisposeAsync would
    // never complete). What does escape (a logging provider that throws, or a fault of the transport's own)
    // aborts the connection, and the side ends here if it had not begun to end.
    private void RunReceiveGuarded()
    {
        try
        {
            RunReceive();
        }
        catch (Exception ex)
        {
            OnSideFault(ex, receive: true);
        }
    }

    private void RunSendGuarded()
    {
        try
        {
            RunSend();
        }
        catch (Exception ex)
        {
            OnSideFault(ex, receive: false);
        }
    }

    private void OnSideFault(Exception fault, bool receive)
    {
        try
        {
            Logger.ConnectionFault(ConnectionId, fault);
        }
        catch (Exception)
        {
            // The logger is what failed, most likely: there is nowhere else to say it.
        }

        if (receive ? _receiveEnding : _sendEnding)
        {
            // It failed on its way out: a side is never ended twice, and the rest of this object is left
            // alone (its other side may be handing it off). Only the log above says what happened.
            return;
        }

        // As an abort: an RST, and the other side let go of whatever it waits on.
        try
        {
            CloseAbortively(new ConnectionAbortedException("The transport failed this connection.", fault));
        }
        catch (Exception)
        {
            // Its log, after the close: the side still ends below.
        }

        try
        {
            _output.CancelPendingRead();
            _input.CancelPendingFlush();
        }
        catch (Exception)
        {
            // Best effort: the abort above ends the other side's socket operation anyway.
        }

        EndSideAfterFault(fault, receive);
    }

    private void EndSideAfterFault(Exception fault, bool receive)
    {
        try
        {
            if (receive)
            {
                EndReceive(new ConnectionAbortedException("The transport failed this connection.", fault));
            }
            else
            {
                EndSend(completed: false, fault);
            }
        }
        catch (Exception)
        {
            // Failed again on the way out (the same logger, say): once a side has begun to end it is
            // not ended twice; only the other side's end, if it gets there, hands the socket off.
        }
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

        // Ends the send side, which is waiting on the application's output.
        _output.CancelPendingRead();
    }

    /// <summary>
    /// Ends the connection for the server. The returned task completes once both sides are done and the
    /// socket is handed off; taking its result returns this object to the pool, so it must be awaited once
    /// and the connection not touched after.
    /// </summary>
#pragma warning disable CA2215 // ConnectionContext's own DisposeAsync does nothing; the object is recycled instead.
    public override ValueTask DisposeAsync()
#pragma warning restore CA2215
    {
        // Once: a second call, even a concurrent one, returns at once and never a second awaitable.
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return ValueTask.CompletedTask;
        }

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
            // The sides never ran (an accepted connection nobody took): their pipe ends are completed
            // here, so that the pipes can be reset for the next connection.
            _input.CompleteWriter();
            _output.CompleteReader();
            Recycle();
            return ValueTask.CompletedTask;
        }

        return new ValueTask(this, _finished.Version);
    }

    void IValueTaskSource.GetResult(short token)
    {
        // Validates the token first: a second GetResult of the same awaitable (awaited twice, or AsTask and
        // an await) throws here and recycles nothing, so this object never goes to the pool twice.
        _finished.GetResult(token);
        _finished.Reset();
        Recycle();
    }

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _finished.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _finished.OnCompleted(continuation, state, token, flags);

    /// <summary>Queued by <see cref="OnLoopDone"/> from a ring thread: DisposeAsync completes on the thread pool.</summary>
    void IThreadPoolWorkItem.Execute() => _finished.SetResult(true);

    /// <summary>Both sides are done with this connection: hand the socket off and let DisposeAsync complete.</summary>
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
                _finished.SetResult(true);
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
    /// The receive side's steps. A step that starts an operation names the step that takes its result;
    /// the side resumes there, inline when the operation completed at once, else from its completion.
    /// </summary>
    private enum ReceiveStep : byte
    {
        WaitForData,
        DataReady,
        Receive,
        Received,
        ProbeReceived,
        Flushed,
        Drain,
        Drained,
        HalfClose,
        HalfCloseOver,
    }

    /// <summary>Where the send side resumes when the operation it waited for completes.</summary>
    private enum SendStep : byte
    {
        Read,
        ReadDone,
        Sent,
    }

    // The two sides are hand-written state machines rather than async loops: an async method kept
    // waiting between connections holds a state machine box per side, and three signals to hand out
    // turns; here a side's state is a few fields of this object, resumed by one cached delegate each.
    // A side that waits stores what it waits for and the step to resume at, registers its delegate, and
    // touches nothing after: the delegate may already be running on another thread.
    // Each side's continuation, with the connection as its state: the sources are the transport's own
    // (the engine's operations, the pipes), registered directly, so no connection holds a delegate.
    private static readonly Action<object?> s_runReceive = static state => ((WinsockConnection)state!).RunReceiveGuarded();
    private static readonly Action<object?> s_runSend = static state => ((WinsockConnection)state!).RunSendGuarded();
    private ReceiveStep _receiveStep;
    private SendStep _sendStep;
    private bool _applicationStoppedReading;
    private bool _probeForFin;
    private bool _receivePaused;
    private bool _sendIsLast;
    // What an operation that completed at once gave (received bytes, the flush's result); one that waited
    // is asked at its source (ConnectionIo.TakeReceiveResult, InputPipe.TakeFlushResult, ...TakeSendResult):
    // no ValueTask field a side.
    private int _received;
    private bool _receiveWaited;
    private FlushResult _flushed;
    private bool _sendWaited;
    private Task? _halfCloseWait;
    private IMemoryOwner<byte>? _drainBuffer;

    /// <summary>
    /// The receive side, one run per connection: data into the input pipe until the peer's FIN; if the
    /// application stops reading first, drain and discard until the FIN (the socket can only be reused
    /// once the peer has closed, and closing on unread data would send an RST); with half-close allowed,
    /// keep the connection while the application still sends. Runs inline until it must wait, and again
    /// from the completion of what it waited for.
    /// </summary>
    private void RunReceive()
    {
        Exception? error = null;
        try
        {
            if (!AdvanceReceive())
            {
                return;
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

        EndReceive(error);
    }

    /// <summary>Runs the receive side until it waits (false) or this connection's input is over (true).</summary>
    private bool AdvanceReceive()
    {
        var input = _input;
        while (true)
        {
            switch (_receiveStep)
            {
                case ReceiveStep.WaitForData:
                    // Wait for data before taking a buffer, so an idle connection holds no memory
                    // (unless WaitForDataBeforeAllocatingBuffer is off).
                    if (!_factory.WaitForData)
                    {
                        goto case ReceiveStep.Receive;
                    }

                    if (ReceiveWaits(_io.WaitForDataAsync(), ReceiveStep.DataReady))
                    {
                        return false;
                    }

                    continue;

                case ReceiveStep.DataReady:
                    TakeReceived();
                    goto case ReceiveStep.Receive;

                case ReceiveStep.Receive:
                    if (_outputEnded && _probeForFin)
                    {
                        // Once the output has ended, what arrives next is most likely the peer's FIN: a
                        // one-byte probe takes it instead of pipe memory, because a pipe completed while it
                        // holds an empty write segment drops that segment rather than pooling it (an
                        // allocation per connection). A byte that does arrive goes into the pipe as usual,
                        // and the rest of this connection's input is received the usual way.
                        if (ReceiveWaits(_io.ReceiveAsync(Probe), ReceiveStep.ProbeReceived))
                        {
                            return false;
                        }

                        continue;
                    }

                    if (ReceiveWaits(_io.ReceiveAsync(input.GetMemory(_factory.MinReceiveSize)), ReceiveStep.Received))
                    {
                        return false;
                    }

                    continue;

                case ReceiveStep.ProbeReceived:
                {
                    var probed = TakeReceived();
                    if (probed == 0)
                    {
                        goto case ReceiveStep.HalfClose;
                    }

                    _probeBuffer.AsSpan(0, probed).CopyTo(input.GetSpan(probed));
                    _probeForFin = false;
                    if (FlushWaits(probed))
                    {
                        return false;
                    }

                    continue;
                }

                case ReceiveStep.Received:
                {
                    var received = TakeReceived();
                    if (received == 0)
                    {
                        goto case ReceiveStep.HalfClose;
                    }

                    if (FlushWaits(received))
                    {
                        return false;
                    }

                    continue;
                }

                case ReceiveStep.Flushed:
                {
                    var result = _receivePaused ? _input.TakeFlushResult() : _flushed;
                    if (_receivePaused)
                    {
                        Logger.ConnectionResume(ConnectionId);
                    }

                    if (result.IsCompleted || result.IsCanceled)
                    {
                        _applicationStoppedReading = true;
                        _drainBuffer = _factory.MemoryPool.Rent();
                        goto case ReceiveStep.Drain;
                    }

                    goto case ReceiveStep.WaitForData;
                }

                case ReceiveStep.Drain:
                    // Nobody reads any more: receive and discard until the peer's FIN.
                    if (ReceiveWaits(_io.ReceiveAsync(_drainBuffer!.Memory), ReceiveStep.Drained))
                    {
                        return false;
                    }

                    continue;

                case ReceiveStep.Drained:
                    if (TakeReceived() > 0)
                    {
                        goto case ReceiveStep.Drain;
                    }

                    goto case ReceiveStep.HalfClose;

                case ReceiveStep.HalfClose:
                {
                    // The peer's FIN.
                    ReleaseDrainBuffer();
                    OnPeerFin();
                    if (_applicationStoppedReading || _factory.HalfCloseTimeout is not { } halfCloseTimeout)
                    {
                        return true;
                    }

                    TaskCompletionSource sendingEnded;
                    lock (_closeLock)
                    {
                        if (_sendEnded)
                        {
                            return true;
                        }

                        sendingEnded = _sendingEnded = new(TaskCreationOptions.RunContinuationsAsynchronously);
                    }

                    // A half-close: the input ends here, but the connection lives on for sending, bounded.
                    _input.CompleteWriter();
                    var wait = sendingEnded.Task.WaitAsync(halfCloseTimeout);
                    _receiveStep = ReceiveStep.HalfCloseOver;
                    _halfCloseWait = wait;
                    if (!wait.IsCompleted)
                    {
                        // Rare (a half-close while sending): a delegate of its own is fine here.
                        wait.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(RunReceive);
                        return false;
                    }

                    continue;
                }

                case ReceiveStep.HalfCloseOver:
                {
                    var wait = _halfCloseWait!;
                    _halfCloseWait = null;
                    try
                    {
                        wait.GetAwaiter().GetResult();
                    }
                    catch (TimeoutException)
                    {
                        // The application kept the connection past the bound: ConnectionClosed fires now.
                    }

                    return true;
                }

                default:
                    throw new InvalidOperationException($"Unknown receive step {_receiveStep}.");
            }
        }
    }

    /// <summary>
    /// Stores a receive-side operation and the step to resume at; true when it must wait for it, its
    /// continuation registered, after which the side touches nothing (it may be running elsewhere by then).
    /// </summary>
    private bool ReceiveWaits(ValueTask<int> operation, ReceiveStep next)
    {
        _receiveStep = next;
        _receiveWaited = TakeOrWait(operation, out _received) is false;
        if (!_receiveWaited)
        {
            return false;
        }

        _io.UnsafeOnReceiveCompleted(s_runReceive, this);
        return true;
    }

    /// <summary>
    /// The result of an operation that has completed, or false when it has not: the side then registers its
    /// continuation with the operation's source and touches nothing after, as the continuation may be
    /// running on another thread by then.
    /// </summary>
    private static bool TakeOrWait<T>(ValueTask<T> operation, out T result)
    {
        if (operation.IsCompleted)
        {
            result = operation.GetAwaiter().GetResult();
            return true;
        }

        result = default!;
        return false;
    }

    private int TakeReceived() => _receiveWaited ? _io.TakeReceiveResult() : _received;

    /// <summary>Commits what was received and flushes it to the application; true when the flush must wait (backpressure).</summary>
    private bool FlushWaits(int received)
    {
        _input.Advance(received);
        _receiveStep = ReceiveStep.Flushed;
        _receivePaused = !TakeOrWait(_input.FlushAsync(), out _flushed);
        if (!_receivePaused)
        {
            return false;
        }

        Logger.ConnectionPause(ConnectionId);
        _input.UnsafeOnFlushCompleted(s_runReceive, this);
        return true;
    }

    private void ReleaseDrainBuffer()
    {
        _drainBuffer?.Dispose();
        _drainBuffer = null;
    }

    /// <summary>The receive side is over for this connection: fire ConnectionClosed, complete the input.</summary>
    private void EndReceive(Exception? error)
    {
        _receiveEnding = true;
        // After a failure the drain's buffer is free too: the receive into it has completed.
        ReleaseDrainBuffer();
        _halfCloseWait = null;
        lock (_closeLock)
        {
            _receiveEnded = true;
            // A drain (or FIN deferral) that is over in time disarms its deadline; one that expired has
            // closed the socket. While the state is still Open the deadline is the dispose's bound on a
            // send that may never finish (the peer can send its FIN and stop reading): it stays armed.
            if (_closeState != CloseState.Open)
            {
                _deadline?.TryDisarm();
            }
        }

        // Handed off: the work item that runs the callbacks ends this side's run after them, so that
        // the server's DisposeAsync never completes (and this object never carries another connection)
        // before every ConnectionClosed callback has run, as with Kestrel's Sockets transport.
        if (!CompleteInputAndFireConnectionClosed(_shutdownReason ?? error))
        {
            OnLoopDone();
        }
    }

    /// <summary>The send side, one run per connection: the application's output to the socket until it completes or is aborted.</summary>
    private void RunSend()
    {
        Exception? failure = null;
        bool completed;
        try
        {
            if (!AdvanceSend(out completed))
            {
                return;
            }
        }
        catch (SocketException ex) when (SocketErrors.IsReset(ex.SocketErrorCode))
        {
            completed = false;
            OnPeerReset();
            failure = new ConnectionResetException(ex.Message, ex);
        }
        catch (Exception ex) when (IsLocalAbort(ex))
        {
            // Aborted: the socket is already closed.
            completed = false;
        }
        catch (Exception ex)
        {
            // The application completed its output with an error, or the send failed.
            completed = false;
            Logger.ConnectionError(ConnectionId, ex);
            failure = ex;
        }

        EndSend(completed, failure);
    }

    /// <summary>Runs the send side until it waits (false) or the output is over (true; <paramref name="completed"/>: gracefully).</summary>
    private bool AdvanceSend(out bool completed)
    {
        var output = _output;
        completed = false;
        ReadResult readNow = default;
        var readNowTaken = false;
        while (true)
        {
            switch (_sendStep)
            {
                case SendStep.Read:
                {
                    // A read that waits is kept by the pipe alone (TakePendingRead): a ValueTask<ReadResult>
                    // field would cost every connection 48 bytes.
                    _sendStep = SendStep.ReadDone;
                    if (!TakeOrWait(output.ReadAsync(), out readNow))
                    {
                        output.UnsafeOnReadCompleted(s_runSend, this);
                        return false;
                    }

                    readNowTaken = true;
                    goto case SendStep.ReadDone;
                }

                case SendStep.ReadDone:
                {
                    var result = readNowTaken ? readNow : output.TakePendingRead();
                    readNowTaken = false;
                    if (result.IsCanceled)
                    {
                        completed = _endSendingGracefully;
                        return true;
                    }

                    _sendIsLast = result.IsCompleted;
                    if (!result.Buffer.IsEmpty)
                    {
                        _sendStep = SendStep.Sent;
                        _sendWaited = !TakeOrWait(_io.SendAsync(result.Buffer), out _);
                        if (_sendWaited)
                        {
                            _io.UnsafeOnSendCompleted(s_runSend, this);
                            return false;
                        }
                    }

                    goto case SendStep.Sent;
                }

                case SendStep.Sent:
                {
                    if (_sendWaited)
                    {
                        _sendWaited = false;
                        _io.TakeSendResult();
                    }

                    output.AdvanceToEnd();
                    if (_sendIsLast)
                    {
                        completed = true;
                        return true;
                    }

                    _sendStep = SendStep.Read;
                    continue;
                }

                default:
                    throw new InvalidOperationException($"Unknown send step {_sendStep}.");
            }
        }
    }

    /// <summary>The send side is over for this connection: the FIN (or the abort), then the output pipe's reader completes.</summary>
    private void EndSend(bool completed, Exception? failure)
    {
        _sendEnding = true;
        if (completed)
        {
            EndOutput();
        }
        else if (failure is not null && !_peerReset)
        {
            CloseAbortively(new ConnectionAbortedException(failure.Message, failure));
        }

        _output.CompleteReader(failure is ConnectionResetException ? null : failure);
        if (!completed)
        {
            // Aborted or failed: if the receive side is held by backpressure, let it go, nobody will
            // read any more. After a graceful end the application may still be reading its input (our
            // FIN only ends the output), so the receive side carries on delivering it; the server's
            // DisposeAsync completes the input, which releases a held flush too.
            _input.CancelPendingFlush();
        }

        TaskCompletionSource? sendingEnded;
        lock (_closeLock)
        {
            _sendEnded = true;
            sendingEnded = _sendingEnded;
        }

        sendingEnded?.TrySetResult();
        OnLoopDone();
    }

    private static bool IsLocalAbort(Exception ex)
        => ex is ObjectDisposedException || (ex is SocketException se && SocketErrors.IsLocalAbort(se.SocketErrorCode));
}
