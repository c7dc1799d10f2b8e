using System.Buffers;
using System.IO.Pipelines;
using Microsoft.AspNetCore.Connections;

namespace Transport.Winsock.Outbound;

/// <summary>
/// A connection as the <see cref="Stream"/> SocketsHttpHandler's ConnectCallback returns: reads come from
/// the input pipe, writes go to the output pipe and are flushed at once (HttpClient buffers itself), and
/// disposing ends the connection gracefully: its output completes, so the FIN (or the deferred FIN) goes
/// out after every byte written, and the rest of the teardown runs in the background.
/// <para>
/// HttpClient disposes a stream with a read still pending (its idle connections keep one, and a canceled
/// request leaves one): the dispose cancels it, and the connection is let go only once no read or write
/// is in flight, so nothing touches the pipes after they are completed. A write still in flight at the
/// dispose (a request canceled mid-upload) makes the end an abort: its bytes cannot all be sent.
/// </para>
/// </summary>
internal sealed class ConnectionStream(ConnectionContext connection) : Stream
{
    private readonly PipeReader _input = connection.Transport.Input;
    private readonly PipeWriter _output = connection.Transport.Output;
    private readonly TaskCompletionSource _ended = new(TaskCreationOptions.RunContinuationsAsynchronously);
    // The reads, writes and dispose in flight, and the disposed bit, in one word: the operation whose
    // decrement leaves the bit alone lets the connection go, and nothing can be in flight after that.
    private const int DisposedBit = 1 << 30;
    private int _state;
    private int _released;
    private volatile bool _writing;

    /// <summary>The connection under the stream; internal for tests.</summary>
    internal ConnectionContext Connection => connection;

    public override bool CanRead => true;

    public override bool CanWrite => true;

    public override bool CanSeek => false;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        Enter();
        try
        {
            while (true)
            {
                ReadResult result;
                try
                {
                    result = await _input.ReadAsync(cancellationToken).ConfigureAwait(false);
                }
                catch (ConnectionAbortedException ex)
                {
                    // Ended on this side (an abort, a drain timeout): for HttpClient an I/O failure, not a cancellation.
                    throw new IOException(ex.Message, ex);
                }

                var data = result.Buffer;
                if (result.IsCanceled && IsDisposed)
                {
                    _input.AdvanceTo(data.Start);
                    throw new ObjectDisposedException(nameof(ConnectionStream), "The stream was disposed during the read.");
                }

                if (!data.IsEmpty)
                {
                    var count = (int)Math.Min(data.Length, buffer.Length);
                    data.Slice(0, count).CopyTo(buffer.Span);
                    _input.AdvanceTo(data.GetPosition(count));
                    return count;
                }

                _input.AdvanceTo(data.End);
                if (result.IsCompleted || buffer.IsEmpty)
                {
                    return 0;
                }
            }
        }
        finally
        {
            Exit();
        }
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        Enter();
        _writing = true;
        try
        {
            FlushResult result;
            try
            {
                result = await _output.WriteAsync(buffer, cancellationToken).ConfigureAwait(false);
            }
            catch (ConnectionAbortedException ex)
            {
                throw new IOException(ex.Message, ex);
            }

            if (result.IsCanceled && IsDisposed)
            {
                throw new ObjectDisposedException(nameof(ConnectionStream), "The stream was disposed during the write.");
            }

            if (result.IsCompleted)
            {
                // The send side ended under the write: the connection was reset or aborted.
                throw new IOException("The connection was closed before the write could be sent.");
            }

            _writing = false;
        }
        finally
        {
            Exit();
        }
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        => WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    // Every write is flushed already.
    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    private bool IsDisposed => (Volatile.Read(ref _state) & DisposedBit) != 0;

    private void Enter()
    {
        if ((Interlocked.Increment(ref _state) & DisposedBit) != 0)
        {
            Exit();
            throw new ObjectDisposedException(nameof(ConnectionStream));
        }
    }

    private void Exit()
    {
        if (Interlocked.Decrement(ref _state) == DisposedBit)
        {
            Release();
        }
    }

    /// <summary>No read or write in flight, and disposed: the connection ends, once, and is never touched again.</summary>
    private void Release()
    {
        if (Interlocked.Exchange(ref _released, 1) != 0)
        {
            return;
        }

        if (_writing)
        {
            // A write that did not finish: the output is cut short, so the end is an RST, not a FIN after half a message.
            connection.Abort(new ConnectionAbortedException("The stream was disposed with a write in flight."));
        }

        _ = EndAsync();
    }

    private async Task EndAsync()
    {
        try
        {
            await connection.DisposeAsync().ConfigureAwait(false);
        }
        finally
        {
            _ended.TrySetResult();
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing && !IsDisposed)
        {
            // The dispose is in flight itself until both cancels are done: a read it cancels can end at
            // once on another thread, and were that the last one out, the connection (a pooled object)
            // could be let go and carry the next connection before the flush's cancel reached it.
            Interlocked.Increment(ref _state);
            if ((Interlocked.Or(ref _state, DisposedBit) & DisposedBit) == 0)
            {
                // A pending read or flush returns now (canceled); the last operation out lets the connection go.
                _input.CancelPendingRead();
                _output.CancelPendingFlush();
            }

            Exit();
        }

        base.Dispose(disposing);
    }

    public override async ValueTask DisposeAsync()
    {
        // Stream's own: Dispose(true), above.
        await base.DisposeAsync().ConfigureAwait(false);
        // The whole teardown: the FIN (or deferred FIN), the drain, the close.
        await _ended.Task.ConfigureAwait(false);
    }
}
