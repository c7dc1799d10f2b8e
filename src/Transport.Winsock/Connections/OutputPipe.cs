using System.Buffers;
using System.IO.Pipelines;
using System.Runtime.ExceptionServices;
using System.Threading.Tasks.Sources;

namespace Transport.Winsock.Connections;

/// <summary>
/// A connection's output: the application writes into it (it is the <see cref="PipeWriter"/> of
/// <c>Transport.Output</c>) and the connection's send loop reads from it. It behaves as a
/// <see cref="Pipe"/> with the same <see cref="PipeOptions"/> would for those two users (flushes pause at
/// PauseWriterThreshold and resume under ResumeWriterThreshold; the reader's continuations run on the
/// options' ReaderScheduler, the flush's on its WriterScheduler; a writer's error is thrown to the
/// reader), but it is one object, and once everything written has been sent it holds no memory and no
/// segment: an idle keep-alive connection carries ~200 bytes here where a Pipe with its reader, writer
/// and segment stack carries ~500.
/// </summary>
/// <remarks>
/// The reader side is the send loop's alone: it reads, sends all it got, then calls
/// <see cref="AdvanceToEnd"/>. Memory the reader was given is never returned while the reader may still
/// use it (a send in flight): only <see cref="AdvanceToEnd"/>, or both sides completing, returns it.
/// </remarks>
internal sealed class OutputPipe : PipeWriter, IValueTaskSource<ReadResult>, IValueTaskSource<FlushResult>
{
    private static readonly Action<object?> s_cancelFlush = static state => ((OutputPipe)state!).OnFlushTokenCanceled();

    private readonly PipeOptions _options;
    // The connection's one lock, shared with its input pipe and its close (one object a connection, not three).
    private readonly Lock _lock;

    // The unsent bytes and the writer's place after them.
    private PipeSegmentList _segments;
    private long _unsent;
    // What the last read handed out, which AdvanceToEnd consumes.
    private PipeSegment? _readEnd;
    private int _readEndIndex;
    private long _readLength;

    private bool _writerCompleted;
    private bool _readerCompleted;
    private Exception? _writerError;
    private Exception? _readerError;
    private bool _readCancelRequested;
    private bool _flushCancelRequested;

    private PipeWaiter _reader;
    private PipeWaiter _flush;
    private PipeCancellation _flushCancellation;

    public OutputPipe(PipeOptions options, Lock? gate = null)
    {
        _options = options;
        _lock = gate ?? new Lock();
    }

    // ---- The writer: the application ----

    public override bool CanGetUnflushedBytes => true;

    public override long UnflushedBytes => _segments.Unflushed;

    public override Memory<byte> GetMemory(int sizeHint = 0) => _segments.TryGetMemory(sizeHint, out var memory) ? memory : EnsureWritable(sizeHint);

    public override Span<byte> GetSpan(int sizeHint = 0) => GetMemory(sizeHint).Span;

    public override void Advance(int bytes)
    {
        if (_writerCompleted || Volatile.Read(ref _readerCompleted))
        {
            // After the writer's own Complete, or once nobody will send it: nothing more goes out, and
            // the writer goes on writing into the same memory, as into a Pipe whose reader is done.
            return;
        }

        _segments.Advance(bytes);
    }

    public override ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            // As a Pipe does: nothing is committed, and the flush ends cancelled.
            return ValueTask.FromCanceled<FlushResult>(cancellationToken);
        }

        PipeWaiter wake;
        ValueTask<FlushResult> result;
        Exception? readerError = null;
        lock (_lock)
        {
            if (_writerCompleted)
            {
                // A Pipe answers a flush after the writer's completion too; nothing more goes out.
                return new(new FlushResult(isCanceled: false, isCompleted: _readerCompleted));
            }

            if (_flush.IsWaiting)
            {
                throw new InvalidOperationException("Concurrent flushes are not supported: the previous flush has not completed.");
            }

            wake = CommitLocked();
            if (_readerCompleted)
            {
                // Nobody will send it: what was written goes, and the writer learns the output is over
                // (or, when the send failed, why).
                ReturnAllLocked();
                readerError = _readerError;
                result = new(new FlushResult(isCanceled: false, isCompleted: true));
            }
            else if (PipeWaiter.FlushesAtOnce(ref _flush, ref _flushCancelRequested, _options.PauseWriterThreshold, _unsent, out var flushed))
            {
                result = new(flushed);
            }
            else
            {
                _flushCancellation.Register(s_cancelFlush, this, cancellationToken);
                result = new(this, _flush.Token);
            }
        }

        wake.Run(_options.ReaderScheduler);
        return readerError is null ? result : ValueTask.FromException<FlushResult>(readerError);
    }

    public override void CancelPendingFlush() => PipeWaiter.CancelPending(_lock, ref _flush, ref _flushCancelRequested, _options.WriterScheduler);

    public override void Complete(Exception? exception = null)
    {
        PipeWaiter wake;
        lock (_lock)
        {
            if (_writerCompleted)
            {
                return;
            }

            // What was written and not flushed is still sent, as a Pipe does.
            wake = CommitLocked();
            _writerCompleted = true;
            _writerError = exception;
            _segments.DropWritable();
            if (_readerCompleted)
            {
                ReturnAllLocked();
            }

            if (!wake.HasContinuation && _reader.IsWaiting)
            {
                wake = _reader.Complete();
            }
        }

        wake.Run(_options.ReaderScheduler);
    }

    private Memory<byte> EnsureWritable(int sizeHint)
    {
        lock (_lock)
        {
            if (_writerCompleted)
            {
                throw new InvalidOperationException("Writing is not allowed after the writer was completed.");
            }

            if (_readerCompleted)
            {
                // Nobody will send what is written from now on: a write goes on in one block, not a growing list.
                ReturnAllLocked();
            }

            return _segments.EnsureWritable(_options, sizeHint, firstRunningIndex: 0);
        }
    }

    /// <summary>Makes what was written readable; returns the reader to wake, if it waits.</summary>
    private PipeWaiter CommitLocked()
    {
        var committed = _segments.Commit();
        if (committed == 0)
        {
            // A GetMemory with nothing written (a copy that ended): the block goes back when all is sent.
            ReleaseIfIdleLocked();
            return default;
        }

        _unsent += committed;
        return _reader.IsWaiting ? _reader.Complete() : default;
    }

    /// <summary>All sent and nothing being written: hold no memory while idle.</summary>
    private void ReleaseIfIdleLocked()
    {
        if (_unsent == 0)
        {
            _segments.ReleaseIfIdle();
        }
    }

    private void OnFlushTokenCanceled() => _flushCancellation.OnCanceled(_lock, ref _flush, _options.WriterScheduler);

    // ---- The reader: the connection's send loop ----

    /// <summary>What there is to send; waits for a flush, the writer's completion or <see cref="CancelPendingRead"/>.</summary>
    public ValueTask<ReadResult> ReadAsync()
    {
        lock (_lock)
        {
            if (_readerCompleted)
            {
                throw new InvalidOperationException("Reading is not allowed after the reader was completed.");
            }

            if (_readCancelRequested || _unsent > 0 || _writerCompleted)
            {
                return new(GetReadResultLocked());
            }

            _reader.Begin();
            return new(this, _reader.Token);
        }
    }

    /// <summary>Everything the last read returned was sent: its memory goes back, and a paused flush may resume.</summary>
    public void AdvanceToEnd()
    {
        PipeWaiter wake = default;
        lock (_lock)
        {
            if (_readLength == 0)
            {
                return;
            }

            _unsent -= _readLength;
            _readLength = 0;
            _segments.ConsumeTo(_readEnd!, _readEndIndex);
            _readEnd = null;
            ReleaseIfIdleLocked();

            if (_flush.IsWaiting && _unsent < _options.ResumeWriterThreshold)
            {
                wake = _flush.Complete();
            }
        }

        wake.Run(_options.WriterScheduler);
    }

    /// <summary>Ends the pending (or the next) read with IsCanceled, as PipeReader.CancelPendingRead does.</summary>
    public void CancelPendingRead() => PipeWaiter.CancelPending(_lock, ref _reader, ref _readCancelRequested, _options.ReaderScheduler);

    /// <summary>
    /// The send loop is done: a flush that waits (or comes) says IsCompleted, or throws
    /// <paramref name="error"/> (why sending failed); memory goes once the writer is done too.
    /// </summary>
    public void CompleteReader(Exception? error = null)
    {
        PipeWaiter wake = default;
        lock (_lock)
        {
            if (_readerCompleted)
            {
                return;
            }

            _readerCompleted = true;
            _readerError = error;
            _readLength = 0;
            _readEnd = null;
            if (_writerCompleted)
            {
                ReturnAllLocked();
            }

            if (_flush.IsWaiting)
            {
                wake = _flush.Complete();
            }
        }

        wake.Run(_options.WriterScheduler);
    }

    /// <summary>Both sides completed: ready for the pooled connection's next use.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            if (!_writerCompleted || !_readerCompleted)
            {
                throw new InvalidOperationException("An output pipe can only be reset once both of its sides are completed.");
            }

            ReturnAllLocked();
            _reader.Invalidate();
            _flush.Invalidate();
            _flushCancellation.Reset();
            _writerCompleted = _readerCompleted = false;
            _writerError = _readerError = null;
            _readCancelRequested = _flushCancelRequested = false;
            _unsent = 0;
        }
    }

    private ReadResult GetReadResultLocked()
    {
        if (_writerCompleted && _writerError is { } error)
        {
            ExceptionDispatchInfo.Throw(error);
        }

        var canceled = _readCancelRequested;
        _readCancelRequested = false;
        ReadOnlySequence<byte> buffer;
        if (_unsent == 0)
        {
            buffer = default;
            _readLength = 0;
        }
        else
        {
            buffer = _segments.Readable;
            _readEnd = _segments.ReadTail;
            _readEndIndex = _segments.ReadTailIndex;
            _readLength = _unsent;
        }

        return new ReadResult(buffer, canceled, isCompleted: _writerCompleted && !canceled);
    }

    private void ReturnAllLocked()
    {
        // Bytes written and dropped with their segments are no longer unflushed or unsent.
        _segments.ReturnAll();
        _readEnd = null;
        _readEndIndex = 0;
        _readLength = 0;
        _unsent = 0;
    }

    // ---- The two awaitables: the send loop's read and the application's flush ----

    /// <summary>
    /// The result of the read that <see cref="ReadAsync"/> left waiting, once it completed: what its
    /// ValueTask's GetResult returns, for a reader that keeps no copy of that ValueTask.
    /// </summary>
    public ReadResult TakePendingRead() => ((IValueTaskSource<ReadResult>)this).GetResult(_reader.Token);

    ReadResult IValueTaskSource<ReadResult>.GetResult(short token)
    {
        lock (_lock)
        {
            _reader.End(token);
            return GetReadResultLocked();
        }
    }

    ValueTaskSourceStatus IValueTaskSource<ReadResult>.GetStatus(short token) => _reader.GetStatus(token);

    /// <summary>
    /// The transport's own wait for a read that <see cref="ReadAsync"/> left waiting: <paramref name="continuation"/>
    /// runs with <paramref name="state"/> at its end, as its awaiter's UnsafeOnCompleted would, with no delegate made for it.
    /// </summary>
    public void UnsafeOnReadCompleted(Action<object?> continuation, object state)
        => ((IValueTaskSource<ReadResult>)this).OnCompleted(continuation, state, _reader.Token, ValueTaskSourceOnCompletedFlags.None);

    void IValueTaskSource<ReadResult>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => PipeWaiter.OnCompleted(_lock, ref _reader, continuation, state, token, flags, _options.ReaderScheduler);

    FlushResult IValueTaskSource<FlushResult>.GetResult(short token)
    {
        CancellationTokenRegistration registration;
        CancellationToken canceledToken;
        Exception? readerError;
        FlushResult result;
        lock (_lock)
        {
            registration = _flushCancellation.End(ref _flush, token, out canceledToken);
            var canceled = _flushCancelRequested;
            _flushCancelRequested = false;
            readerError = _readerCompleted ? _readerError : null;
            result = new FlushResult(canceled, isCompleted: _readerCompleted);
        }

        registration.Dispose();
        if (readerError is not null && !canceledToken.IsCancellationRequested)
        {
            ExceptionDispatchInfo.Throw(readerError);
        }

        if (canceledToken.IsCancellationRequested)
        {
            throw new OperationCanceledException("The flush was canceled by its token.", canceledToken);
        }

        return result;
    }

    ValueTaskSourceStatus IValueTaskSource<FlushResult>.GetStatus(short token)
    {
        lock (_lock)
        {
            // A flush that will throw the reader's error says so.
            return _flush.GetStatus(token, faulted: _readerCompleted && _readerError is not null);
        }
    }

    void IValueTaskSource<FlushResult>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => PipeWaiter.OnCompleted(_lock, ref _flush, continuation, state, token, flags, _options.WriterScheduler);
}
